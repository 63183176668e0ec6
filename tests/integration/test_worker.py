"""The worker: wake-ups, sync and async handlers, concurrency, graceful SIGTERM,
attempt timeouts, cancel and manual retry, and writes that share a transaction
(runs claimed together end together; a quick run is never held back by a slow
one; an ending or a checkpoint whose lease was lost fails alone; texts written
together come back exactly)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from stackshift import (
    AsyncJobContext,
    Backoff,
    InvalidTransitionError,
    JobContext,
    NonRetriableError,
    StackShift,
    ValidationError,
)
from stackshift.durations import to_datetime
from stackshift.errors import LeaseLost
from stackshift.store.base import Outcome, StepWrite
from stackshift.store.database import Tx
from stackshift.testing import FakeClock, run_until_idle
from stopping import stop_keeps_the_records_logged, stop_with_a_cancel_requested

APP = Path(__file__).with_name("worker_app.py")


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


# -- waking up -------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_run_started_in_process_starts_at_once_not_at_the_next_poll(
    app: StackShift, flavour: str
) -> None:
    """A run started next to an idle worker starts within 50 ms (SPEC 10).

    The worker polls only every 10 s here, so every start below is a wake-up.
    """
    first_step_at: dict[str, float] = {}
    entered = threading.Event()

    def mark(run_id: str) -> None:
        first_step_at[run_id] = time.perf_counter()
        entered.set()

    if flavour == "sync":

        @app.job("ping")
        def ping(ctx):  # type: ignore[no-untyped-def]
            ctx.step.run("first", mark, ctx.run.id)

    else:

        @app.job("ping")
        async def ping_async(ctx):  # type: ignore[no-untyped-def]
            await ctx.step.run("first", mark, ctx.run.id)

    latencies = []
    with app.worker(poll_interval="10s"):
        for _ in range(10):
            time.sleep(0.05)  # let the worker go idle again
            entered.clear()
            run = app.start("ping", {})
            started = time.perf_counter()
            assert entered.wait(5), "the worker was not woken"
            latencies.append(first_step_at[run.id] - started)
            app.runs.wait(run.id, timeout="5s")
    assert max(latencies) < 1.0  # far below the 10 s poll interval: woken, not polled
    assert statistics.median(latencies) < 0.050, [f"{x * 1000:.1f}ms" for x in latencies]


def test_no_wake_up_is_lost_when_a_run_starts_while_the_worker_looks_for_work(
    app: StackShift
) -> None:
    """Each run is started the moment the previous handler ends, i.e. while the
    worker is busy finishing it and claiming again: none may wait for the poll."""
    ending = threading.Event()

    @app.job("relay")
    def relay(ctx):  # type: ignore[no-untyped-def]
        ending.set()

    stalls = 0
    with app.worker(poll_interval="10s"):
        for _ in range(200):
            ending.clear()
            app.start("relay")
            if not ending.wait(1.0):
                stalls += 1
                assert ending.wait(15)
    assert stalls == 0


def test_run_started_by_another_client_is_noticed_without_waiting_for_the_poll(
    app: StackShift, db_url: str
) -> None:
    entered = threading.Event()

    @app.job("ping")
    def ping(ctx):  # type: ignore[no-untyped-def]
        entered.set()

    other = StackShift(db_url)  # its own connections: a different process, in effect
    try:
        with app.worker(poll_interval="10s"):
            time.sleep(0.1)
            other.start("ping", {})
            started = time.monotonic()
            assert entered.wait(5)
            assert time.monotonic() - started < 1.0
    finally:
        other.close()


# -- handlers --------------------------------------------------------------------------


def test_sync_and_async_handlers_run_side_by_side(app: StackShift) -> None:
    @app.job("plain")
    def plain(ctx):  # type: ignore[no-untyped-def]
        value = ctx.step.run("double", lambda n: n * 2, ctx.payload["n"])
        return {"value": value, "thread": threading.current_thread().name}

    async def triple(n: int) -> int:
        await asyncio.sleep(0)
        return n * 3

    @app.job("coroutine")
    async def coroutine(ctx):  # type: ignore[no-untyped-def]
        value = await ctx.step.run("triple", triple, ctx.payload["n"])
        also = await ctx.step.run("sync-fn-in-async-handler", lambda: value + 1)
        return {"value": also, "loop": asyncio.get_running_loop() is not None}

    with app.worker(concurrency=4):
        runs = [app.start("plain", {"n": i}) for i in range(3)]
        runs += [app.start("coroutine", {"n": i}) for i in range(3)]
        done = [app.runs.wait(r.id, timeout="10s") for r in runs]
    assert [d.status for d in done] == ["completed"] * 6
    assert [d.result["value"] for d in done] == [0, 2, 4, 1, 4, 7]
    # Plain handlers run in worker threads, never on the caller's thread.
    assert all(d.result["thread"] != threading.current_thread().name for d in done[:3])
    assert all(d.result["loop"] for d in done[3:])


class Order(BaseModel):
    n: int


class Item(BaseModel):
    sku: str


class Many(BaseModel):
    items: list[Item]
    note: str


def test_a_handler_annotated_with_a_payload_model_gets_the_model_or_fails_at_once(
        app: StackShift) -> None:
    """``ctx: JobContext[Order]`` (or ``AsyncJobContext[Order]``) gives ``ctx.payload``
    as an ``Order``, in sync and async handlers; a payload that does not fit fails
    the run on its first attempt (a retry would not make it fit), naming the model.
    An async handler annotated the old way (``JobContext``) gets the async context."""
    @app.job("typed", max_attempts=3)
    def typed(ctx: JobContext[Order]) -> list[Any]:
        return [type(ctx).__name__, type(ctx.payload).__name__, ctx.payload.n]

    @app.job("typedAsync", max_attempts=3)
    async def typed_async(ctx: JobContext[Order]) -> list[Any]:
        n = await ctx.step.run("n", lambda: ctx.payload.n)
        return [type(ctx).__name__, type(ctx.payload).__name__, n]

    @app.job("typedAsyncContext", max_attempts=3)
    async def typed_async_context(ctx: AsyncJobContext[Order]) -> list[Any]:
        n = await ctx.step.run("n", lambda: ctx.payload.n)
        return [type(ctx).__name__, type(ctx.payload).__name__, n]

    jobs = ("typed", "typedAsync", "typedAsyncContext")
    good = [app.start(job, {"n": 7}) for job in jobs]
    bad = [app.start(job, {"n": "seven"}) for job in jobs]
    run_until_idle(app)
    assert [app.runs.get(r.id).result for r in good] == [
        ["JobContext", "Order", 7], ["AsyncJobContext", "Order", 7],
        ["AsyncJobContext", "Order", 7]]
    for run in bad:
        failed = app.runs.get(run.id)
        assert (failed.status, failed.attempt) == ("failed", 1)
        assert failed.error is not None and failed.error.type == "NonRetriableError"
        assert failed.error.message == (
            "payload does not match Order: n: Input should be a valid integer, unable to parse"
            " string as an integer"), failed.error.message
    # Every field that does not fit, on one line; past ten, how many more.
    @app.job("typedMany", max_attempts=3)
    def typed_many(ctx: JobContext[Many]) -> None:
        return None

    missing = app.start("typedMany", {"items": [{}, {"sku": 1}]})
    crowded = app.start("typedMany", {"items": [{} for _ in range(12)]})
    run_until_idle(app)
    assert app.runs.get(missing.id).error.message == (  # type: ignore[union-attr]
        "payload does not match Many: items.0.sku: Field required; items.1.sku: Input should"
        " be a valid string; note: Field required")
    message = app.runs.get(crowded.id).error.message  # type: ignore[union-attr]
    assert message.startswith("payload does not match Many: items.0.sku: Field required; "
                              "items.1.sku: Field required; "), message
    assert message.endswith("items.9.sku: Field required (and 3 more)"), message


@dataclasses.dataclass
class Parcel:
    weight: int
    label: str = "-"


class Unvalidated:
    """A class pydantic knows no way to validate a payload into."""


def test_a_payload_annotated_with_a_dataclass_or_any_type_pydantic_validates_gets_it(
        app: StackShift) -> None:
    """Not only pydantic models: a dataclass, ``Model | None``, ``list[int]``...
    are validated (and converted) before the handler runs, as the type checker
    is told; ``Any`` is left alone, and a type nothing can validate into is
    refused when the job is registered."""
    @app.job("parcel", max_attempts=3)
    def parcel(ctx: JobContext[Parcel]) -> list[Any]:
        return [type(ctx.payload).__name__, ctx.payload.weight, ctx.payload.label]

    @app.job("maybeOrder")
    async def maybe_order(ctx: AsyncJobContext[Order | None]) -> str:
        return type(ctx.payload).__name__

    @app.job("counts")
    def counts(ctx: JobContext[list[int]]) -> int:
        return sum(ctx.payload)

    @app.job("anything")
    def anything(ctx: JobContext[Any]) -> Any:
        return ctx.payload

    with pytest.raises(ValidationError, match=r"^handler for job 'opaque': its payload type"
                                              r" Unvalidated cannot be validated \("):
        @app.job("opaque")
        def opaque(ctx: JobContext[Unvalidated]) -> None:
            return None
    assert "opaque" not in app.jobs

    started = {
        "parcel": app.start("parcel", {"weight": "3"}),
        "parcelBad": app.start("parcel", {"label": "x"}),
        "none": app.start("maybeOrder", None),
        "order": app.start("maybeOrder", {"n": 1}),
        "counts": app.start("counts", [1, "2", 3]),
        "countsBad": app.start("counts", {"n": 1}),
        "anything": app.start("anything", {"free": ["form"]}),
    }
    run_until_idle(app)
    ended = {name: app.runs.get(run.id) for name, run in started.items()}
    assert {name: run.result for name, run in ended.items() if run.status == "completed"} == {
        "parcel": ["Parcel", 3, "-"], "none": "NoneType", "order": "Order", "counts": 6,
        "anything": {"free": ["form"]}}
    for name, message in [("parcelBad", "payload does not match Parcel: weight: Field required"),
                          ("countsBad", "payload does not match list[int]: payload: Input"
                                        " should be a valid list")]:
        failed = ended[name]
        assert (failed.status, failed.attempt) == ("failed", 1)
        assert failed.error is not None and failed.error.message == message


@dataclasses.dataclass
class Shipment:
    sent_at: datetime
    weight: Decimal


def test_a_dataclass_with_times_and_decimals_goes_in_and_comes_back_as_itself(
        app: StackShift) -> None:
    """A dataclass whose fields pydantic writes as JSON text (a datetime, a Decimal)
    is a payload, a step's result, an event's payload and a state value, stored as
    a pydantic model with those fields is; a handler typed with it gets it back."""
    sent = Shipment(datetime(2026, 3, 1, 8, 0, tzinfo=UTC), Decimal("2.5"))

    @app.job("ship")
    def ship(ctx: JobContext[Shipment]) -> list[Any]:
        again = ctx.step.run("copy", lambda: ctx.payload)
        return [ctx.payload == sent, again]

    run = app.start("ship", sent)
    run_until_idle(app)
    stored = {"sent_at": "2026-03-01T08:00:00Z", "weight": "2.5"}
    assert app.runs.get(run.id).result == [True, stored]
    app.state.set("last", sent)
    assert app.state.get("last") == stored
    assert app.events.get(app.events.send("shipped", sent).id).payload == stored


def test_a_payload_type_is_kept_when_another_annotation_cannot_be_resolved(
        fake_app: StackShift) -> None:
    """Annotations are strings in this module (``from __future__ import
    annotations``). A return type only a type checker resolves (imported under
    ``TYPE_CHECKING``) leaves the context's payload type in force; a context whose
    payload type cannot be resolved (a class defined in the test) is refused when
    the job is defined, not taken for no payload type."""
    @fake_app.job("typedReturn")
    def typed_return(ctx: JobContext[Order]) -> OnlyForTypeCheckers:  # noqa: F821
        return type(ctx.payload).__name__  # type: ignore[no-any-return]

    class Local(BaseModel):
        n: int

    with pytest.raises(ValidationError, match=r"^handler for job 'local': the annotation"
                                              r" 'JobContext\[Local\]' of its context cannot be"
                                              r" resolved \(NameError: name 'Local' is not"):
        @fake_app.job("local")
        def local(ctx: JobContext[Local]) -> None:
            return None
    assert "local" not in fake_app.jobs

    good = fake_app.start("typedReturn", {"n": "1"})
    bad = fake_app.start("typedReturn", {"m": 1})
    run_until_idle(fake_app)
    assert fake_app.runs.get(good.id).result == "Order"
    failed = fake_app.runs.get(bad.id)
    assert (failed.status, failed.attempt) == ("failed", 1)
    assert failed.error is not None
    assert failed.error.message.startswith("payload does not match Order: n: Field required")


def test_async_handlers_behind_decorators_partials_and_call_objects_are_awaited(
        app: StackShift) -> None:
    """Every handler that gives a coroutine when called runs as an async handler:
    its ``ctx.step`` is awaitable, and its payload model is found, however it is
    wrapped. One that cannot be recognised fails once with a message saying why,
    not with "coroutine is not JSON-serialisable"."""
    def traced(fn: Any) -> Any:  # a decorator with a plain wrapper, as tracing ones are
        @functools.wraps(fn)
        def wrapper(ctx: Any) -> Any:
            return fn(ctx)
        return wrapper

    async def add(n: int) -> int:
        await asyncio.sleep(0)
        return n + 1

    @app.job("decorated")
    @traced
    async def decorated(ctx: JobContext[Order]) -> int:
        return int(await ctx.step.run("add", add, ctx.payload.n))

    class Handler:
        async def __call__(self, ctx: JobContext[Order]) -> int:
            return int(await ctx.step.run("add", add, ctx.payload.n * 10))

    async def scaled(ctx: Any, factor: int) -> int:
        return int(await ctx.step.run("add", add, ctx.payload["n"] * factor))

    app.job("callObject", Handler())
    app.job("partial", functools.partial(scaled, factor=100))
    app.job("hidden", lambda ctx: scaled(ctx, 1000), max_attempts=3)

    runs = [app.start(job, {"n": 1}) for job in ("decorated", "callObject", "partial", "hidden")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine ... was never awaited"
        run_until_idle(app)
    done = [app.runs.get(r.id) for r in runs]
    assert [(d.status, d.result) for d in done[:3]] == [
        ("completed", 2), ("completed", 11), ("completed", 101)]
    assert [s.key for s in app.runs.steps(runs[0].id)] == ["add"]
    hidden = done[3]
    assert (hidden.status, hidden.attempt) == ("failed", 1)
    assert hidden.error is not None and hidden.error.type == "NonRetriableError"
    assert hidden.error.message.startswith(
        "the handler of job 'hidden' returned a coroutine instead of a result: it was called"
        " as a plain function. Register an async def")


def test_step_functions_may_take_keyword_arguments_called_name_or_fn(app: StackShift) -> None:
    def create_user(*, name: str, fn: str) -> dict[str, str]:
        return {"name": name, "fn": fn}

    async def create_user_async(*, name: str, fn: str) -> dict[str, str]:
        return {"name": name.upper(), "fn": fn}

    @app.job("signUp")
    def sign_up(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("create-user", create_user, name="Ada", fn="admin")

    @app.job("signUpAsync")
    async def sign_up_async(ctx):  # type: ignore[no-untyped-def]
        first = await ctx.step.run("create-user", create_user_async, name="Ada", fn="admin")
        second = await ctx.step.run("create-user", create_user, name="Bob", fn="dev")
        return [first, second]

    sync_run, async_run = app.start("signUp"), app.start("signUpAsync")
    run_until_idle(app)
    done = app.runs.get(sync_run.id)
    assert (done.status, done.result) == ("completed", {"name": "Ada", "fn": "admin"})
    done = app.runs.get(async_run.id)
    assert (done.status, done.result) == (
        "completed", [{"name": "ADA", "fn": "admin"}, {"name": "Bob", "fn": "dev"}])


def test_worker_as_async_context_manager(db_url: str) -> None:
    from stackshift import AsyncStackShift

    async def main() -> str:
        async with AsyncStackShift(db_url) as app:

            @app.job("hello")
            async def hello(ctx):  # type: ignore[no-untyped-def]
                return {"hi": ctx.payload["name"]}

            async with app.worker():
                run = await app.start("hello", {"name": "ada"})
                done = await app.runs.wait(run.id, timeout="10s")
            return str(done.result["hi"])

    assert asyncio.run(main()) == "ada"


def test_async_client_migrates_and_tells_the_time_like_the_sync_one(db_url: str) -> None:
    from stackshift import AsyncStackShift

    async def main() -> tuple[int, int, str]:
        async with AsyncStackShift(db_url, migrate=False) as app:
            version = await app.migrate()
            again = await app.migrate()
            run = await app.start("later", delay="1h")
            assert run.scheduled_at is not None
            assert 3599 < run.scheduled_at.timestamp() - app.clock.now() <= 3600
            return version, again, run.status

    version, again, status = asyncio.run(main())
    with StackShift(db_url) as sync:
        assert version == again == sync.migrate() > 0
    assert status == "scheduled"


BAD_WORKER_OPTIONS = [
    ({"queues": "emails"}, r"queues must be a list of queue names .*: use queues=\['emails'\]"),
    ({"queues": []}, "queues must name at least one queue"),
    ({"queues": ["a b"]}, "queue name 'a b' is invalid"),
    ({"concurrency": "4"}, "concurrency must be an integer from 1 to 100000, got '4'"),
    ({"concurrency": 1.5}, "concurrency must be an integer"),
    ({"concurrency": True}, "concurrency must be an integer"),
    ({"concurrency": 0}, "concurrency must be an integer"),
    ({"poll_interval": 0}, "poll_interval must be more than 0"),
    ({"maintenance_interval": "0s"}, "maintenance_interval must be more than 0"),
]


def test_bad_worker_options_are_refused_before_the_worker_exists(app: StackShift) -> None:
    """A string of queues is not read as the queues named by its letters (the
    worker would never take a run of ``emails``), no queue at all is not a
    worker that takes nothing, and a zero interval is not a busy loop."""
    app.job("hello", lambda ctx: "hi")
    for options, message in BAD_WORKER_OPTIONS:
        with pytest.raises(ValidationError, match=message):
            app.worker(**options)
    assert app._service.list_workers() == []
    run = app.start("hello", queue_name="emails")
    with app.worker(queues=("emails",)):
        assert app.runs.wait(run.id, timeout="10s").result == "hi"


def test_start_and_stop(app: StackShift) -> None:
    @app.job("noop")
    def noop(ctx):  # type: ignore[no-untyped-def]
        return 1

    worker = app.worker()
    worker.start()
    try:
        assert app.runs.wait(app.start("noop").id, timeout="10s").status == "completed"
    finally:
        worker.stop()
    # A stopped worker takes nothing more.
    later = app.start("noop")
    time.sleep(0.3)
    assert app.runs.get(later.id).status == "queued"


CLOSE_WITH_A_WORKER_RUNNING = """
import sys, time
from stackshift import StackShift

for round in range(4):
    with StackShift(sys.argv[1]) as app:
        @app.job("stepper")
        def stepper(ctx):
            return ctx.step.run("one", lambda: 1) + ctx.step.run("two", lambda: 1)

        app.worker().start()  # never stopped: leaving the block closes the client
        app.start_many("stepper", [{}] * 100)
        time.sleep(0.01 * round)
"""


def test_closing_a_client_stops_the_workers_it_made_first(app: StackShift) -> None:
    """A client closed while its worker runs (never stopped, or left running by
    ``with StackShift() as app:``) stops it first: no handler writes through
    closed connections (the process crashed), and every run is either done or
    handed back for the next worker."""
    assert app.database_url is not None
    done = subprocess.run([sys.executable, "-c", CLOSE_WITH_A_WORKER_RUNNING,
                           app.database_url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runs = app.runs.list(limit=1000).items
    assert len(runs) == 400
    assert {r.status for r in runs} <= {"completed", "queued"}

    @app.job("stepper")
    def stepper(ctx):  # type: ignore[no-untyped-def]
        return ctx.step.run("one", lambda: 1) + ctx.step.run("two", lambda: 1)

    with app.worker():
        ended = [app.runs.wait(r.id, timeout="60s") for r in runs]
    assert {(r.status, r.result) for r in ended} == {("completed", 2)}


def test_a_worker_stopped_as_its_run_is_cancelled_says_cancelled(
        app: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    stop_with_a_cancel_requested(app, caplog)


def test_a_worker_stopped_mid_step_keeps_the_records_its_attempt_logged(
        app: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    stop_keeps_the_records_logged(app, caplog)


class Overlap:
    """How many handlers ran at once, at most: each calls ``enter()`` as it
    begins and ``leave()`` as it ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_concurrency_limit_is_respected(app: StackShift, flavour: str) -> None:
    handlers = Overlap()
    enter, leave = handlers.enter, handlers.leave

    if flavour == "sync":

        @app.job("busy")
        def busy(ctx):  # type: ignore[no-untyped-def]
            enter()
            time.sleep(0.15)
            leave()

    else:

        @app.job("busy")
        async def busy_async(ctx):  # type: ignore[no-untyped-def]
            enter()
            await asyncio.sleep(0.15)
            leave()

    runs = [app.start("busy") for _ in range(7)]
    with app.worker(concurrency=3):
        for r in runs:
            assert app.runs.wait(r.id, timeout="20s").status == "completed"
    assert handlers.peak == 3


# -- SIGTERM ---------------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, url: str, effects: Path, *args: str) -> None:
        self.effects = effects
        self.log = effects.with_name(f"worker-{os.getpid()}-{time.monotonic_ns()}.out")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(APP), url, str(effects), *args],
                stdout=out, stderr=subprocess.STDOUT,
            )

    def lines(self) -> list[str]:
        return self.effects.read_text().splitlines() if self.effects.exists() else []

    def wait_for_line(self, prefix: str, timeout: float = 20.0) -> None:
        wait_until(lambda: any(x.startswith(prefix) for x in self.lines())
                   or self.proc.poll() is not None, timeout, prefix)
        assert any(x.startswith(prefix) for x in self.lines()), self.log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def spawn(db_url: str, tmp_path: Path) -> Iterator[Any]:
    procs: list[WorkerProcess] = []

    def make(*args: str) -> WorkerProcess:
        proc = WorkerProcess(db_url, tmp_path / "effects.log", *args)
        procs.append(proc)
        return proc

    yield make
    for p in procs:
        p.close()


def rescue_while(app: StackShift, proc: subprocess.Popen[bytes]) -> None:
    """Play another worker's lease rescuer until ``proc`` exits."""
    rescuer = app.worker()
    while proc.poll() is None:
        rescuer.maintain()
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_lets_the_running_attempt_finish_within_the_grace_period(
    app: StackShift, spawn: Any
) -> None:
    # Step 2 takes 2.5 s, longer than the 1 s lease: the worker must keep renewing
    # the lease while it drains, not only at step checkpoints.
    worker = spawn("--step-seconds", "2.5", "--slow-at", "2", "--lease", "1s",
                   "--grace", "15s")
    run = app.start("fiveSteps", {})
    worker.wait_for_line("start:step-2:")
    signalled = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    # Another worker's rescuer is active the whole time and must find nothing to take.
    rescue_while(app, worker.proc)
    assert worker.proc.wait(timeout=20) == 0
    took = time.monotonic() - signalled
    assert took < 10, f"drained in {took:.1f}s"

    done = app.runs.get(run.id)
    assert done.status == "completed", (done.status, done.error)
    assert done.attempt == 1
    assert [a.status for a in app.runs.attempts(run.id)] == ["completed"]
    lines = worker.lines()
    assert Counter(x.rsplit(":", 1)[0] for x in lines if x.startswith("done:")) == {
        f"done:step-{n}": 1 for n in range(1, 6)}
    assert lines[-1].startswith("exited:")


@pytest.mark.slow
def test_sigterm_stops_claiming_new_runs(app: StackShift, spawn: Any) -> None:
    worker = spawn("--step-seconds", "0.3", "--grace", "15s")
    first = app.start("fiveSteps", {})
    worker.wait_for_line("start:step-1:")
    worker.proc.send_signal(signal.SIGTERM)
    time.sleep(0.1)
    second = app.start("fiveSteps", {})
    assert worker.proc.wait(timeout=20) == 0
    assert app.runs.get(first.id).status == "completed"
    assert app.runs.get(second.id).status == "queued"
    assert app.runs.attempts(second.id) == []


@pytest.mark.slow
def test_sigterm_past_the_grace_period_releases_the_attempt_to_continue_elsewhere(
    app: StackShift, spawn: Any
) -> None:
    worker = spawn("--step-seconds", "0.5", "--grace", "0.2s")
    run = app.start("fiveSteps", {})
    worker.wait_for_line("done:step-1:")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0

    released = app.runs.get(run.id)
    assert released.status == "queued"
    assert released.attempt == 1
    timeline = app.runs.timeline(run.id)
    assert timeline[-1].kind == "run.queued" and timeline[-1].data["from"] == "running"
    assert "attempt.failed" not in [e.kind for e in timeline]

    # Another worker continues the same attempt from the completed steps.
    successor = spawn("--step-seconds", "0")
    done = app.runs.wait(run.id, timeout="20s")
    successor.proc.send_signal(signal.SIGTERM)
    assert done.status == "completed"
    assert done.attempt == 1
    assert [a.status for a in app.runs.attempts(run.id)] == ["completed"]
    done_lines = [x for x in worker.lines() if x.startswith("done:step-1:")]
    assert len(done_lines) == 1


@pytest.mark.slow
def test_a_run_asked_to_cancel_is_cancelled_not_released_when_the_grace_period_ends(
    app: StackShift, spawn: Any
) -> None:
    # Step 2 hangs; the run is cancelled, then its worker is stopped. Handing
    # the run back to the queue would let another worker run step 2 again.
    worker = spawn("--hang-at", "2", "--grace", "0.2s")
    run = app.start("fiveSteps", {})
    worker.wait_for_line("start:step-2:")
    assert app.runs.cancel(run.id, reason="not needed").status == "running"
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0

    cancelled = app.runs.get(run.id)
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    assert cancelled.error is not None and cancelled.error.type == "Cancelled"
    assert cancelled.error.message == "not needed"
    assert [(a.status, a.error and a.error.message)
            for a in app.runs.attempts(run.id)] == [("cancelled", "not needed")]
    assert app.runs.timeline(run.id)[-1].kind == "run.cancelled"

    successor = spawn()
    successor.wait_for_line(f"ready:{successor.proc.pid}")
    time.sleep(1.0)  # it would have claimed a run handed back by now
    successor.proc.send_signal(signal.SIGTERM)
    assert successor.proc.wait(timeout=20) == 0
    assert app.runs.get(run.id).status == "cancelled"
    assert [x.split(":")[1] for x in worker.lines() if x.startswith("start:")] == [
        "step-1", "step-2"]


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_handler_still_running_after_the_grace_period_does_not_keep_the_process_alive(
    app: StackShift, spawn: Any, flavour: str
) -> None:
    # The step sleeps for a minute: the worker hands the run back after 0.2 s and
    # the process exits at once, without waiting for the handler's thread (an
    # async handler is cancelled, quietly).
    worker = spawn("--step-seconds", "60", "--grace", "0.2s", "--flavour", flavour)
    run = app.start("fiveSteps", {})
    worker.wait_for_line("start:step-1:")
    signalled = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 10
    released = app.runs.get(run.id)
    assert released.status == "queued"
    assert app.runs.steps(run.id) == []
    output = worker.log.read_text()
    assert "Traceback" not in output and "destroyed" not in output, output


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_during_the_grace_period_hands_the_runs_back_at_once(
    app: StackShift, spawn: Any, second: signal.Signals
) -> None:
    # Ctrl-C twice: the second one does not wait out the 60 s grace period.
    worker = spawn("--hang-at", "2", "--grace", "60s")
    run = app.start("fiveSteps", {})
    worker.wait_for_line("start:step-2:")
    worker.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert worker.proc.poll() is None  # still in its grace period
    signalled = time.monotonic()
    worker.proc.send_signal(second)
    assert worker.proc.wait(timeout=15) == 0
    assert time.monotonic() - signalled < 8
    output = worker.log.read_text()
    assert "Traceback" not in output, output
    assert worker.lines()[-1].startswith("exited:")

    # Handed back, not failed: the same attempt continues elsewhere from step 2.
    released = app.runs.get(run.id)
    assert (released.status, released.attempt) == ("queued", 1)
    assert "attempt.failed" not in [e.kind for e in app.runs.timeline(run.id)]
    successor = spawn()
    done = app.runs.wait(run.id, timeout="20s")
    successor.proc.send_signal(signal.SIGTERM)
    assert (done.status, done.attempt) == ("completed", 1)
    pid = str(worker.proc.pid)
    assert [x.split(":")[1] for x in worker.lines()
            if x.startswith("done:") and x.endswith(f":{pid}")] == ["step-1"]
    # The successor ran step 2 again (it never completed) and went on from there.
    assert [x.split(":")[1] for x in worker.lines()
            if x.startswith("start:") and not x.endswith(f":{pid}")] == [
        "step-2", "step-3", "step-4", "step-5"]


WITH_BLOCK = """
import signal, sys, threading
from stackshift import StackShift

signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
app = StackShift(sys.argv[1])
release = threading.Event()

@app.job("stuck")
def stuck(ctx):
    ctx.step.run("wait", release.wait, 60)

with app.worker(shutdown_grace="60s", poll_interval=0.05):
    run = app.start("stuck")
    print(run.id, flush=True)
    app.runs.wait(run.id, timeout="120s")
"""


@pytest.mark.slow
def test_a_second_ctrl_c_while_a_with_block_stops_its_worker_hands_the_runs_back(
    app: StackShift, db_url: str, tmp_path: Path
) -> None:
    """A program whose ``with app.worker():`` block is left by Ctrl-C waits out the
    grace period in ``stop()``; a second Ctrl-C there hands the running runs back
    at once, as under ``run()``, instead of interrupting the stop and leaving them
    leased (the next worker would record the attempt as lost)."""
    program = tmp_path / "with_block.py"
    program.write_text(WITH_BLOCK)
    proc = subprocess.Popen([sys.executable, str(program), db_url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        run_id = proc.stdout.readline().strip()
        wait_until(lambda: app.runs.get(run_id).status == "running", 20, "the run running")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert proc.poll() is None  # waiting for the running attempt
        signalled = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - signalled < 10
    # The program ends as Ctrl-C ends it, with the first interrupt's traceback only.
    assert proc.returncode != 0
    assert err.count("KeyboardInterrupt") == 1 and "in stop" not in err, err
    released = app.runs.get(run_id)
    assert (released.status, released.attempt) == ("queued", 1)
    assert [e.kind for e in app.runs.timeline(run_id)][-1] == "run.queued"


def test_run_gives_back_the_signal_handlers_it_replaced(app: StackShift) -> None:
    @app.job("noop")
    def noop(ctx):  # type: ignore[no-untyped-def]
        return None

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    worker = app.worker()
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    worker.run()
    # Ctrl-C after run() returned interrupts the program again.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_run_calls_ready_once_other_processes_start_runs_with_the_jobs_defaults(
    app: StackShift, db_url: str
) -> None:
    """``ready`` (what `stackshift worker` prints its banner on) comes once a
    client without the jobs' code gets their queue and ``max_attempts``, and
    before the worker takes anything."""

    @app.job("post-ledger", queue="ledger", max_attempts=1, cron="0 3 * * *")
    def post_ledger(ctx):  # type: ignore[no-untyped-def]
        return "posted"

    seen: dict[str, Any] = {}
    worker = app.worker()

    def ready() -> None:
        elsewhere = StackShift(db_url)  # knows no job
        try:
            run = elsewhere.start("post-ledger")
            seen.update(queue=run.queue, max_attempts=run.max_attempts,
                        status=elsewhere.runs.get(run.id).status,
                        workers=[(j.name, j.live_workers) for j in elsewhere.list_jobs()],
                        schedules=[s.job for s in elsewhere.schedules.list()])
        finally:
            elsewhere.close()
        os.kill(os.getpid(), signal.SIGTERM)

    worker.run(ready=ready)
    assert seen == {"queue": "ledger", "max_attempts": 1, "status": "queued",
                    "workers": [("post-ledger", 1)], "schedules": ["post-ledger"]}

    # A ready that raises: run() raises it, and the worker does not stay behind.
    def broken() -> None:
        raise BrokenPipeError("stderr is gone")

    again = app.worker()
    with pytest.raises(BrokenPipeError):
        again.run(ready=broken)
    assert [(j.name, j.live_workers) for j in app.list_jobs()] == [("post-ledger", 0)]


# -- attempt timeout -------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_attempt_timeout_fails_a_slow_attempt_and_retries(
    app: StackShift, flavour: str
) -> None:
    release = threading.Event()
    finished_late: list[int] = []

    if flavour == "sync":

        @app.job("slow", timeout="0.3s", max_attempts=2, backoff={"base": "0.05s"})
        def slow(ctx):  # type: ignore[no-untyped-def]
            if ctx.run.attempt == 1:
                release.wait(10)
                finished_late.append(ctx.run.attempt)
                ctx.step.run("after-the-deadline", lambda: "too late")
                return {"attempt": 1}
            return {"attempt": ctx.run.attempt}

    else:

        @app.job("slow", timeout="0.3s", max_attempts=2, backoff={"base": "0.05s"})
        async def slow_async(ctx):  # type: ignore[no-untyped-def]
            if ctx.run.attempt == 1:
                await asyncio.sleep(10)
                finished_late.append(ctx.run.attempt)
            return {"attempt": ctx.run.attempt}

    with app.worker():
        run = app.start("slow")
        done = app.runs.wait(run.id, timeout="10s")
        release.set()
        time.sleep(0.2)  # the abandoned sync attempt returns and must change nothing
    assert done.status == "completed"
    assert done.result == {"attempt": 2}
    final = app.runs.get(run.id)
    assert (final.status, final.result) == ("completed", {"attempt": 2})
    attempts = app.runs.attempts(run.id)
    assert [a.status for a in attempts] == ["failed", "completed"]
    assert attempts[0].error is not None
    assert attempts[0].error.type == "AttemptTimeoutError"
    assert "0.3s" in attempts[0].error.message
    assert attempts[0].duration is not None and attempts[0].duration < 5
    # The late attempt's step was refused: it no longer owned the run.
    assert "after-the-deadline" not in [s.key for s in app.runs.steps(run.id)]
    if flavour == "async":
        assert finished_late == []  # the coroutine was cancelled, not left running


def test_a_timed_out_sync_handler_keeps_its_slot_even_when_its_run_is_claimed_again(
    app: StackShift
) -> None:
    # A thread cannot be killed: the timed-out attempt's thread keeps running,
    # and keeps its slot, also while the next attempt of its run runs here.
    handlers = Overlap()
    enter, leave = handlers.enter, handlers.leave
    release = threading.Event()
    second_started = threading.Event()

    @app.job("stuck", timeout="1.5s", max_attempts=2, backoff={"base": "0.05s"})
    def stuck(ctx):  # type: ignore[no-untyped-def]
        enter()
        try:
            if ctx.run.attempt == 1:
                release.wait(20)  # a blocking call the timeout cannot interrupt
            else:
                second_started.set()
                time.sleep(1.0)
            return ctx.run.attempt
        finally:
            leave()

    @app.job("other")
    def other(ctx):  # type: ignore[no-untyped-def]
        enter()
        leave()
        return "done"

    with app.worker(concurrency=2) as worker:
        run = app.start("stuck")
        assert second_started.wait(10)
        # Two handlers run: the stuck first attempt and the second one.
        extra = app.start("other")
        time.sleep(0.5)
        assert app.runs.get(extra.id).status == "queued"
        assert app.runs.get(run.id).status == "running"
        release.set()
        assert app.runs.wait(extra.id, timeout="10s").status == "completed"
        assert app.runs.wait(run.id, timeout="10s").result == 2
        wait_until(lambda: worker._free_slots() == 2, what="every slot to free")
    assert handlers.peak == 2
    assert [a.error and a.error.type for a in app.runs.attempts(run.id)] == [
        "AttemptTimeoutError", None]


def test_stop_does_not_wait_for_a_handler_whose_attempt_already_timed_out(
    app: StackShift
) -> None:
    release = threading.Event()

    @app.job("stuck", timeout="0.2s", max_attempts=1)
    def stuck(ctx):  # type: ignore[no-untyped-def]
        release.wait(30)

    worker = app.worker(shutdown_grace="20s").start()
    try:
        failed = app.runs.wait(app.start("stuck").id, timeout="10s")
        assert failed.error is not None and failed.error.type == "AttemptTimeoutError"
        asked = time.monotonic()
        worker.stop()  # nothing of it is left to hand back: no grace period to wait out
        assert time.monotonic() - asked < 5
    finally:
        release.set()
    assert app.runs.get(failed.id).status == "failed"


@pytest.mark.parametrize("how", ["catches the cancellation", "blocks the event loop"])
def test_an_async_attempt_that_does_not_stop_when_cancelled_still_fails_on_time(
        app: StackShift, how: str) -> None:
    finished = threading.Event()

    @app.job("stubborn", timeout="0.3s", max_attempts=1)
    async def stubborn(ctx):  # type: ignore[no-untyped-def]
        try:
            if how == "blocks the event loop":
                time.sleep(4)  # e.g. a sync HTTP client called from an async handler
            else:
                try:
                    await asyncio.sleep(4)
                except asyncio.CancelledError:
                    await asyncio.sleep(4)  # "cleaning up"
            return "done anyway"
        finally:
            finished.set()

    with app.worker() as worker:
        started = time.monotonic()
        failed = app.runs.wait(app.start("stubborn").id, timeout="10s")
        took = time.monotonic() - started
        assert finished.wait(10)
        wait_until(lambda: worker._free_slots() == worker.concurrency, what="its slot")
    assert (failed.status, failed.result) == ("failed", None)
    assert failed.error is not None and failed.error.type == "AttemptTimeoutError"
    assert "did not stop when cancelled" in failed.error.message
    assert took < 3, f"failed after {took:.1f}s"


def test_a_worker_that_stops_with_an_async_handler_that_never_stops_says_so_once(
        app: StackShift, caplog: pytest.LogCaptureFixture) -> None:
    """A handler that catches every cancellation goes on after its attempt failed at
    its timeout: the worker that stops says so in one warning, not in tracebacks
    ("could not record", "Task was destroyed but it is pending!") when the
    handler's task is collected."""
    @app.job("endless", timeout="0.2s", max_attempts=1)
    async def endless(ctx):  # type: ignore[no-untyped-def]
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(10)

    worker = app.worker()
    worker.CANCEL_WAIT = 0.2
    with worker:
        failed = app.runs.wait(app.start("endless").id, timeout="10s")
    del worker
    gc.collect()
    assert failed.error is not None and failed.error.type == "AttemptTimeoutError"
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in said if "did not stop when cancelled; left behind" in m]) == 1, said
    assert not [m for m in said if "destroyed" in m or "could not record" in m], said


def test_an_async_attempt_that_catches_the_cancellation_and_returns_fails_as_timed_out(
        app: StackShift) -> None:
    @app.job("stubborn", timeout="0.3s", max_attempts=2, backoff={"base": "0.01s"})
    async def stubborn(ctx):  # type: ignore[no-untyped-def]
        if ctx.run.attempt == 1:
            try:
                await asyncio.sleep(4)
            except asyncio.CancelledError:
                return "too late"
        return f"attempt {ctx.run.attempt}"

    with app.worker():
        done = app.runs.wait(app.start("stubborn").id, timeout="10s")
    assert (done.status, done.result) == ("completed", "attempt 2")
    first = app.runs.attempts(done.id)[0]
    assert first.error is not None and first.error.type == "AttemptTimeoutError"


def test_a_timeout_error_raised_by_an_async_handler_is_its_own_error_not_the_jobs_timeout(
        app: StackShift) -> None:
    @app.job("calls-out", timeout="30s", max_attempts=1)
    async def calls_out(ctx):  # type: ignore[no-untyped-def]
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)  # the provider is slow: the handler's own limit

    with app.worker():
        failed = app.runs.wait(app.start("calls-out").id, timeout="10s")
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "TimeoutError"
    assert "30s" not in failed.error.message


def test_attempt_timeout_counts_each_invocation_not_the_time_the_run_slept(
        app: StackShift) -> None:
    @app.job("two-halves", timeout="0.8s", max_attempts=1)
    def two_halves(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("first-half", time.sleep, 0.5)
        ctx.step.sleep("pause", "0.5s")
        ctx.step.run("second-half", time.sleep, 0.5)
        return "done"

    with app.worker():
        done = app.runs.wait(app.start("two-halves").id, timeout="10s")
    assert (done.status, done.result, done.attempt) == ("completed", "done", 1)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_slow_attempt_fails_at_its_timeout_not_at_the_next_maintenance_round(
        app: StackShift, flavour: str) -> None:
    # Timeouts were enforced on the worker's maintenance rounds: with rounds
    # every 30 s, a sync attempt with a 1 s timeout ran for up to 31 s.
    release = threading.Event()
    if flavour == "sync":
        @app.job("slow", timeout="1s", max_attempts=1)
        def slow(ctx):  # type: ignore[no-untyped-def]
            release.wait(60)
    else:
        @app.job("slow", timeout="1s", max_attempts=1)
        async def slow_async(ctx):  # type: ignore[no-untyped-def]
            await asyncio.sleep(60)

    try:
        with app.worker(maintenance_interval="30s"):
            time.sleep(0.5)  # the heartbeat sleeps its first round: the start must wake it
            run = app.start("slow")
            failed = app.runs.wait(run.id, timeout="20s")
    finally:
        release.set()
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "AttemptTimeoutError"
    [attempt] = app.runs.attempts(run.id)
    # An async attempt is cancelled at 1 s by its own task; a sync one is failed by
    # the heartbeat. Either ends well before the 30 s round.
    assert attempt.duration is not None and attempt.duration < 10


def test_attempt_timeout_on_the_last_attempt_fails_the_run(app: StackShift) -> None:
    @app.job("stuck", timeout="0.2s", max_attempts=1)
    async def stuck(ctx):  # type: ignore[no-untyped-def]
        await asyncio.sleep(10)

    with app.worker():
        failed = app.runs.wait(app.start("stuck").id, timeout="10s")
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "AttemptTimeoutError"


# -- backoff ---------------------------------------------------------------------------


def test_a_backoff_object_takes_durations_and_is_checked_when_the_job_is_defined(
        fake_app: StackShift, clock: FakeClock) -> None:
    """``Backoff(...)`` takes what ``backoff={...}`` takes, and refuses what it
    refuses at once (it used to be taken as given: a duration such as "5m" made
    the attempt's ending impossible to record, leaving the run running)."""
    @fake_app.job("patient", max_attempts=2, backoff=Backoff(base="5m", jitter=False))
    def patient(ctx):  # type: ignore[no-untyped-def]
        if ctx.run.attempt == 1:
            raise ConnectionError("bank unreachable")
        return ctx.run.attempt

    run = fake_app.start("patient")
    run_until_idle(fake_app)
    retrying = fake_app.runs.get(run.id)
    assert retrying.status == "retrying"
    assert retrying.next_attempt_at == to_datetime(clock.now() + 300)
    clock.advance("5m")
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result == 2

    for bad, message in [({"base": -5}, "backoff.base: -5 must be a finite, non-negative"),
                         ({"factor": 0.5}, "backoff.factor: expected a number >= 1, got 0.5"),
                         ({"cap": "soon"}, "backoff.cap: 'soon' is not a duration")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            Backoff(**bad)


# -- lost workers ----------------------------------------------------------------------


def test_an_attempt_lost_with_its_worker_is_retried_at_once_without_backoff(
        fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    @fake_app.job("patient", max_attempts=2, backoff={"base": "1h", "jitter": False})
    def patient(ctx):  # type: ignore[no-untyped-def]
        if ctx.run.attempt == 1:
            clock.advance("10m")  # this worker stalls past its lease ...
            fake_app.worker().maintain()  # ... and another worker's rescuer takes the run
            ctx.step.run("late", lambda: None)  # refused: this attempt stops here
        return ctx.run.attempt

    run = fake_app.start("patient")
    caplog.set_level(logging.INFO, logger="stackshift.attempts")
    run_until_idle(fake_app)  # no clock.advance: the next attempt is due at once
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result, done.attempt) == ("completed", 2, 2)

    # The lost attempt is on the record and counted; the job's 1 h backoff was not applied.
    lost, second = fake_app.runs.attempts(run.id)
    assert lost.status == "failed"
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert lost.finished_at is not None and second.started_at == lost.finished_at
    timeline = fake_app.runs.timeline(run.id)
    kinds = [e.kind for e in timeline]
    after_loss = kinds[kinds.index("attempt.failed"):]
    assert after_loss == ["attempt.failed", "run.retrying", "run.queued", "attempt.started",
                          "run.completed"]
    retrying = next(e for e in timeline if e.kind == "run.retrying")
    assert retrying.data["next_attempt_at"] == retrying.at.timestamp()

    # With no attempts left, a lost attempt fails the run as WorkerLost.
    last = fake_app.start("patient", max_attempts=1)
    run_until_idle(fake_app)
    failed = fake_app.runs.get(last.id)
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "WorkerLost"

    # The worker that recorded each loss logged it as any failed attempt is logged.
    lost_worker = "WorkerLost: the worker running this attempt stopped renewing its lease"
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "stackshift.attempts"] == [
        ("WARNING", f"patient {run.id}: attempt 1 of 2 failed: {lost_worker}; retrying in 0ms"),
        ("ERROR", f"patient {last.id}: failed for good on attempt 1 of 1: {lost_worker}")]


# -- cancel ----------------------------------------------------------------------------


def test_cancel_a_queued_run(app: StackShift) -> None:
    ran: list[str] = []

    @app.job("never")
    def never(ctx):  # type: ignore[no-untyped-def]
        ran.append(ctx.run.id)

    run = app.start("never", {})
    cancelled = app.runs.cancel(run.id, reason="order refunded")
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    assert cancelled.error is not None and cancelled.error.type == "Cancelled"
    assert cancelled.error.message == "order refunded"
    entry = app.runs.timeline(run.id)[-1]
    assert entry.kind == "run.cancelled"
    assert entry.data == {"from": "queued", "reason": "order refunded"}

    # Cancelling again changes nothing; a worker never runs it.
    assert app.runs.cancel(run.id).status == "cancelled"
    assert len(app.runs.timeline(run.id)) == 2
    # Without a reason, the entry has none (not a null one).
    other = app.start("never", {})
    app.runs.cancel(other.id)
    assert app.runs.timeline(other.id)[-1].data == {"from": "queued"}
    assert run_until_idle(app) == 0
    assert ran == []


def test_cancelling_a_handed_back_run_ends_its_attempt(app: StackShift) -> None:
    # A run handed back by a stopping worker continues its attempt; cancelled
    # before another worker took it, that attempt was left "running" for good,
    # even after the run was retried and completed.
    release = threading.Event()

    @app.job("slow")
    def slow(ctx):  # type: ignore[no-untyped-def]
        if ctx.run.attempt == 1:
            ctx.step.run("nap", release.wait, 10)
        return "done"

    try:
        with app.worker(shutdown_grace="0.2s"):
            run = app.start("slow")
            wait_until(lambda: app.runs.get(run.id).status == "running", 20, "the run running")
    finally:
        release.set()
    assert app.runs.get(run.id).status == "queued"  # handed back
    cancelled = app.runs.cancel(run.id, reason="order refunded")
    [attempt] = app.runs.attempts(run.id)
    assert (attempt.status, attempt.finished_at) == ("cancelled", cancelled.finished_at)
    assert attempt.error is not None and attempt.error.message == "order refunded"
    app.runs.retry(run.id)
    with app.worker():
        assert app.runs.wait(run.id, timeout="10s").status == "completed"
    assert [a.status for a in app.runs.attempts(run.id)] == ["cancelled", "completed"]


def test_cancelling_a_run_queued_to_resume_after_its_wait_ends_its_attempt(
        fake_app: StackShift) -> None:
    @fake_app.job("await-payment")
    def await_payment(ctx):  # type: ignore[no-untyped-def]
        ctx.step.wait_for_event("paid", correlation_key=ctx.payload["order"])

    run = fake_app.start("await-payment", {"order": "o-1"})
    run_until_idle(fake_app)
    fake_app.events.send("paid", {}, correlation_key="o-1")
    assert fake_app.runs.get(run.id).status == "queued"  # to resume, attempt 1 still open
    fake_app.runs.cancel(run.id)
    assert [a.status for a in fake_app.runs.attempts(run.id)] == ["cancelled"]


def test_cancel_scheduled_and_retrying_runs_at_once(fake_app: StackShift,
                                                   clock: FakeClock) -> None:
    @fake_app.job("flaky", max_attempts=3)
    def flaky(ctx):  # type: ignore[no-untyped-def]
        raise RuntimeError("down")

    later = fake_app.start("flaky", delay="1h")
    assert later.status == "scheduled"
    assert fake_app.runs.cancel(later.id).status == "cancelled"

    retrying = fake_app.start("flaky")
    run_until_idle(fake_app)
    assert fake_app.runs.get(retrying.id).status == "retrying"
    assert fake_app.runs.cancel(retrying.id).status == "cancelled"
    clock.advance("2h")
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(retrying.id).attempt == 1


def test_a_finished_run_cannot_be_cancelled(fake_app: StackShift) -> None:
    fake_app.job("quick", lambda ctx: 1)
    run = fake_app.start("quick")
    run_until_idle(fake_app)
    with pytest.raises(InvalidTransitionError, match="completed"):
        fake_app.runs.cancel(run.id)
    assert fake_app.runs.get(run.id).status == "completed"


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_cancel_a_running_run_stops_it_at_the_next_step(app: StackShift,
                                                        flavour: str) -> None:
    entered = threading.Event()
    gate = threading.Event()
    effects: list[str] = []

    def charge() -> str:
        effects.append("charge")
        entered.set()
        gate.wait(10)
        return "charged"

    def ship() -> str:
        effects.append("ship")
        return "shipped"

    if flavour == "sync":

        @app.job("order")
        def order(ctx):  # type: ignore[no-untyped-def]
            ctx.step.run("charge", charge)
            ctx.step.run("ship", ship)
            return "done"

    else:

        @app.job("order")
        async def order_async(ctx):  # type: ignore[no-untyped-def]
            await ctx.step.run("charge", charge)
            await ctx.step.run("ship", ship)
            return "done"

    with app.worker():
        run = app.start("order")
        assert entered.wait(10)
        requested = app.runs.cancel(run.id, reason="customer changed their mind")
        # Still running until it reaches a step boundary, and saying it was asked.
        assert (requested.status, requested.cancel_requested) == ("running", True)
        assert app.runs.get(run.id).cancel_requested
        gate.set()
        done = app.runs.wait(run.id, timeout="10s")
    assert (done.status, done.cancel_requested) == ("cancelled", False)
    # The reason given is the run's error, as for a run cancelled at once.
    assert done.error is not None and done.error.message == "customer changed their mind"
    assert effects == ["charge"]
    steps = {s.key: s.status for s in app.runs.steps(run.id)}
    assert steps == {"charge": "completed"}  # the step in flight finished and was kept
    assert [(a.status, a.error and a.error.message) for a in app.runs.attempts(run.id)] == [
        ("cancelled", "customer changed their mind")]
    kinds = [e.kind for e in app.runs.timeline(run.id)]
    assert kinds.index("run.cancel_requested") < kinds.index("run.cancelled")
    assert kinds[-1] == "run.cancelled"
    assert done.result is None


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_cancel_made_between_two_steps_stops_the_run_before_the_second(
        app: StackShift, flavour: str) -> None:
    # The handler works outside any step when the cancel comes: no checkpoint
    # tells the worker of it, and the heartbeat is seconds away. Past FRESH_FOR
    # (50 ms) without word from the store, the next step boundary asks first,
    # and the next step does not run.
    between = threading.Event()
    gate = threading.Event()
    effects: list[str] = []

    if flavour == "sync":

        @app.job("order")
        def order(ctx):  # type: ignore[no-untyped-def]
            ctx.step.run("charge", lambda: effects.append("charge"))
            between.set()
            gate.wait(10)  # work that is not a step
            ctx.step.run("ship", lambda: effects.append("ship"))

    else:

        @app.job("order")
        async def order_async(ctx):  # type: ignore[no-untyped-def]
            await ctx.step.run("charge", lambda: effects.append("charge"))
            between.set()
            await asyncio.to_thread(gate.wait, 10)
            await ctx.step.run("ship", lambda: effects.append("ship"))

    with app.worker(lease="30s"):
        run = app.start("order")
        assert between.wait(10)
        assert app.runs.cancel(run.id).status == "running"
        time.sleep(0.1)  # the work goes on past the worker's FRESH_FOR
        gate.set()
        done = app.runs.wait(run.id, timeout="10s")
    assert done.status == "cancelled"
    # No reason given: the message says where the cancel caught it.
    assert done.error is not None and done.error.message == "cancelled while running"
    assert effects == ["charge"]
    assert [s.key for s in app.runs.steps(run.id)] == ["charge"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_run_cancelled_while_its_step_fails_is_cancelled_not_retried(
        app: StackShift, flavour: str, caplog: pytest.LogCaptureFixture) -> None:
    # The operator cancels a run stuck in a slow call that then fails: the
    # attempt's error is kept, but no further attempt starts.
    caplog.set_level(logging.INFO, logger="stackshift.attempts")
    entered = threading.Event()
    gate = threading.Event()
    calls: list[int] = []

    def call_provider() -> None:
        calls.append(1)
        entered.set()
        gate.wait(10)
        raise ConnectionError("provider timed out")

    if flavour == "sync":

        @app.job("sync-invoice", max_attempts=5, backoff={"base": "0.01s"})
        def sync_invoice(ctx):  # type: ignore[no-untyped-def]
            ctx.step.run("call-provider", call_provider)

    else:

        @app.job("sync-invoice", max_attempts=5, backoff={"base": "0.01s"})
        async def sync_invoice_async(ctx):  # type: ignore[no-untyped-def]
            await ctx.step.run("call-provider", call_provider)

    with app.worker():
        run = app.start("sync-invoice")
        assert entered.wait(10)
        assert app.runs.cancel(run.id, reason="stuck").status == "running"
        gate.set()
        done = app.runs.wait(run.id, timeout="10s")
        time.sleep(0.3)  # a retry, if one were due, would have started by now
    assert done.status == "cancelled"
    assert done.error is not None and done.error.type == "Cancelled"
    assert done.error.message == "stuck"
    assert done.next_attempt_at is None and done.finished_at is not None
    assert calls == [1]
    assert [(a.number, a.status, a.error and a.error.type)
            for a in app.runs.attempts(run.id)] == [(1, "failed", "ConnectionError")]
    kinds = [e.kind for e in app.runs.timeline(run.id)]
    # The step's entry is at its start, before the cancel asked while it ran.
    assert kinds == ["run.queued", "attempt.started", "step.failed", "run.cancel_requested",
                     "attempt.failed", "run.cancelled"]
    assert app.runs.get(run.id).status == "cancelled"
    assert said_of_attempts(caplog, run.id) == [
        ("INFO", f"sync-invoice {run.id}: attempt 1 of 5 failed: ConnectionError: provider"
                 " timed out; the run is cancelled, as asked while it ran")]


@pytest.mark.parametrize("ending", ["last attempt", "NonRetriableError"])
def test_a_run_cancelled_while_its_last_attempt_fails_is_cancelled_and_starts_no_failure_handler(
        app: StackShift, ending: str, caplog: pytest.LogCaptureFixture) -> None:
    # As with attempts left: the operator asked to cancel, so the run ends
    # cancelled, not failed (no dead letter, no on_failure job).
    caplog.set_level(logging.INFO, logger="stackshift.attempts")
    entered = threading.Event()
    gate = threading.Event()
    handled: list[Any] = []

    def call_provider() -> None:
        entered.set()
        gate.wait(10)
        if ending == "NonRetriableError":
            raise NonRetriableError("card declined")
        raise ConnectionError("provider timed out")

    @app.job("on-invoice-failure")
    def on_invoice_failure(ctx):  # type: ignore[no-untyped-def]
        handled.append(ctx.payload["run_id"])

    @app.job("invoice", max_attempts=1 if ending == "last attempt" else 5,
             on_failure="on-invoice-failure")
    def invoice(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("call-provider", call_provider)

    with app.worker():
        run = app.start("invoice")
        assert entered.wait(10)
        assert app.runs.cancel(run.id, reason="stuck").status == "running"
        gate.set()
        done = app.runs.wait(run.id, timeout="10s")
        time.sleep(0.3)  # a failure handler, if one were started, would have run by now
    assert done.status == "cancelled"
    assert done.error is not None and (done.error.type, done.error.message) == (
        "Cancelled", "stuck")
    error = "ConnectionError" if ending == "last attempt" else "NonRetriableError"
    assert [(a.status, a.error and a.error.type)
            for a in app.runs.attempts(run.id)] == [("failed", error)]
    kinds = [e.kind for e in app.runs.timeline(run.id)]
    assert kinds[-2:] == ["attempt.failed", "run.cancelled"]
    assert "run.failure_handler" not in kinds and "run.failed" not in kinds
    assert handled == []
    assert list(app.runs.list(job="on-invoice-failure")) == []
    assert list(app.queue("default").dead_letters()) == []
    # Not said to be failed for good: no dead letter to look for.
    [(level, said)] = said_of_attempts(caplog, run.id)
    assert level == "INFO" and said.endswith("; the run is cancelled, as asked while it ran")


def said_of_attempts(caplog: pytest.LogCaptureFixture, run_id: str) -> list[tuple[str, str]]:
    """What the worker said of ``run_id``'s attempts on ``stackshift.attempts``."""
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "stackshift.attempts" and run_id in r.getMessage()]


def test_a_handler_that_returns_after_a_cancel_was_requested_completes_the_run(
        app: StackShift) -> None:
    # No step boundary left to stop at: the work is done, and the run says so.
    entered = threading.Event()
    gate = threading.Event()

    @app.job("report")
    def report(ctx):  # type: ignore[no-untyped-def]
        ctx.step.run("first", lambda: 1)
        entered.set()
        gate.wait(10)
        return "sent"

    with app.worker():
        run = app.start("report")
        assert entered.wait(10)
        assert app.runs.cancel(run.id, reason="too late").status == "running"
        gate.set()
        done = app.runs.wait(run.id, timeout="10s")
    assert (done.status, done.result, done.error) == ("completed", "sent", None)
    kinds = [e.kind for e in app.runs.timeline(run.id)]
    assert "run.cancel_requested" in kinds and kinds[-1] == "run.completed"


@pytest.mark.parametrize("pause", ["sleep", "wait"])
def test_a_cancel_requested_just_before_a_sleep_or_wait_cancels_the_run(
        fake_app: StackShift, clock: FakeClock, pause: str) -> None:
    # The cancel comes while the run is running, moments before it would park:
    # the run must not park (and later wake or time out) with the cancel forgotten.
    effects: list[str] = []

    @fake_app.job("remind")
    def remind(ctx):  # type: ignore[no-untyped-def]
        if not effects:
            fake_app.runs.cancel(ctx.run.id, reason="user deleted")
        effects.append("invoked")
        if pause == "sleep":
            ctx.step.sleep("a-day", "1d")
        else:
            fake_app.events.send("reply")  # an early event is not taken either
            ctx.step.wait_for_event("reply", timeout="1h")
        ctx.step.run("send", lambda: effects.append("sent"))
        return "reminded"

    run = fake_app.start("remind")
    run_until_idle(fake_app)
    cancelled = fake_app.runs.get(run.id)
    assert cancelled.status == "cancelled"
    assert cancelled.waiting_for is None and cancelled.finished_at is not None
    assert cancelled.error is not None and cancelled.error.type == "Cancelled"
    assert cancelled.error.message == "user deleted"
    assert [(a.status, a.error and a.error.message)
            for a in fake_app.runs.attempts(run.id)] == [("cancelled", "user deleted")]
    assert fake_app.runs.steps(run.id) == []
    kinds = [e.kind for e in fake_app.runs.timeline(run.id)]
    assert kinds == ["run.queued", "attempt.started", "run.cancel_requested", "run.cancelled"]

    clock.advance("2d")
    assert run_until_idle(fake_app) == 0
    assert fake_app.runs.get(run.id).status == "cancelled"
    assert effects == ["invoked"]


def test_a_cancelled_runs_error_gives_the_reason_of_the_cancel_that_stopped_it(
        fake_app: StackShift) -> None:
    # Cancelled while running with a reason, retried by hand, cancelled again
    # with none: the second ending must not take the first cancel's reason.
    reasons = iter(["user deleted", None])
    effects: list[str] = []

    @fake_app.job("remind")
    def remind(ctx):  # type: ignore[no-untyped-def]
        fake_app.runs.cancel(ctx.run.id, reason=next(reasons))
        n = ctx.run.attempt  # new steps each attempt: their checkpoints hear of the cancel
        ctx.step.run(f"a{n}", lambda: effects.append(f"a{n}"))
        ctx.step.run(f"b{n}", lambda: effects.append(f"b{n}"))

    run = fake_app.start("remind")
    run_until_idle(fake_app)
    first = fake_app.runs.get(run.id)
    assert first.status == "cancelled"
    assert first.error is not None and first.error.message == "user deleted"
    fake_app.runs.retry(run.id)
    run_until_idle(fake_app)
    second = fake_app.runs.get(run.id)
    assert second.status == "cancelled"
    assert second.error is not None and second.error.message == "cancelled while running"
    assert [(a.status, a.error and a.error.message)
            for a in fake_app.runs.attempts(run.id)] == [
        ("cancelled", "user deleted"), ("cancelled", "cancelled while running")]
    assert effects == ["a1", "a2"]


# -- manual retry ----------------------------------------------------------------------


def test_retry_of_a_failed_run_reuses_completed_steps_with_a_fresh_budget(
    fake_app: StackShift, clock: FakeClock
) -> None:
    calls: Counter[str] = Counter()
    outage = {"on": True}

    def reserve() -> str:
        calls["reserve"] += 1
        return "seat-12"

    def pay() -> str:
        calls["pay"] += 1
        if outage["on"]:
            raise ConnectionError("payment provider down")
        return "paid"

    @fake_app.job("book", max_attempts=2)
    def book(ctx):  # type: ignore[no-untyped-def]
        seat = ctx.step.run("reserve", reserve)
        ctx.step.run("pay", pay)
        return {"seat": seat}

    run = fake_app.start("book")
    for _ in range(3):
        run_until_idle(fake_app)
        clock.advance("10m")
    failed = fake_app.runs.get(run.id)
    assert (failed.status, failed.attempt) == ("failed", 2)
    assert calls == {"reserve": 1, "pay": 2}

    # Still broken: a retry gets a whole new budget of 2 attempts.
    retried = fake_app.runs.retry(run.id)
    assert retried.status == "queued"
    assert retried.finished_at is None
    for _ in range(3):
        run_until_idle(fake_app)
        clock.advance("10m")
    again = fake_app.runs.get(run.id)
    assert (again.status, again.attempt) == ("failed", 4)
    assert calls == {"reserve": 1, "pay": 4}

    # Fixed: the next retry completes, and the reservation is still not repeated.
    outage["on"] = False
    fake_app.runs.retry(run.id)
    run_until_idle(fake_app)
    done = fake_app.runs.get(run.id)
    assert done.status == "completed"
    assert done.result == {"seat": "seat-12"}
    assert done.error is None
    assert done.attempt == 5
    assert calls == {"reserve": 1, "pay": 5}
    assert [a.number for a in fake_app.runs.attempts(run.id)] == [1, 2, 3, 4, 5]
    manual = [e for e in fake_app.runs.timeline(run.id) if e.data.get("manual_retry")]
    assert [(e.kind, e.data["from"]) for e in manual] == [("run.queued", "failed")] * 2


def test_each_failed_attempt_is_one_record_for_the_worker_s_output_not_the_run_s_logs(
    fake_app: StackShift, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """``stackshift.attempts`` says how each failed attempt ended, on one line:
    retried after how long (WARNING), or failed for good (ERROR), its attempt
    counted in the run's budget as ``runs show`` counts it. The run's own logs
    hold what its handler logged, and nothing of these."""
    @fake_app.job("charge", max_attempts=2, backoff={"base": "2s", "jitter": False})
    def charge(ctx):  # type: ignore[no-untyped-def]
        ctx.log.info("charging")
        raise ConnectionError("bank\n   unreachable")

    @fake_app.job("refund", max_attempts=3)
    def refund(ctx):  # type: ignore[no-untyped-def]
        raise NonRetriableError("declined " * 100)

    charged, refunded = fake_app.start("charge"), fake_app.start("refund")
    with caplog.at_level(logging.INFO, logger="stackshift.attempts"):
        run_until_idle(fake_app)
        clock.advance("2s")
        run_until_idle(fake_app)
        fake_app.runs.retry(charged.id)  # a fresh budget: its attempts count from 1 again
        run_until_idle(fake_app)
    said = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "stackshift.attempts"]
    bank = "ConnectionError: bank unreachable"
    declined = ("NonRetriableError: " + "declined " * 100)[:499] + "…"
    assert sorted(said) == sorted([
        ("WARNING", f"charge {charged.id}: attempt 1 of 2 failed: {bank}; retrying in 2.0s"),
        ("ERROR", f"charge {charged.id}: failed for good on attempt 2 of 2: {bank}"),
        ("WARNING", f"charge {charged.id}: attempt 1 of 2 failed: {bank}; retrying in 2.0s"),
        ("ERROR", f"refund {refunded.id}: failed for good on attempt 1 of 3: {declined}"),
    ])
    assert [entry.message for entry in fake_app.runs.logs(charged.id)] == ["charging"] * 3
    assert fake_app.runs.logs(refunded.id) == []
    run = fake_app.runs.get(refunded.id)
    assert run.error is not None and run.error.message.count("declined") == 100  # whole


def test_retry_of_a_cancelled_run(fake_app: StackShift) -> None:
    fake_app.job("later", lambda ctx: "ran")
    run = fake_app.start("later")
    fake_app.runs.cancel(run.id)
    assert fake_app.runs.retry(run.id).status == "queued"
    run_until_idle(fake_app)
    assert fake_app.runs.get(run.id).result == "ran"


def test_only_failed_or_cancelled_runs_can_be_retried(fake_app: StackShift) -> None:
    fake_app.job("quick", lambda ctx: 1)
    run = fake_app.start("quick")
    with pytest.raises(InvalidTransitionError, match="queued"):
        fake_app.runs.retry(run.id)
    run_until_idle(fake_app)
    with pytest.raises(InvalidTransitionError, match="completed"):
        fake_app.runs.retry(run.id)
    assert len(fake_app.runs.timeline(run.id)) == 3


# -- queues ------------------------------------------------------------------------------


def test_workers_with_different_jobs_on_one_queue_each_take_only_the_runs_they_know(
        app: StackShift, db_url: str) -> None:
    other = StackShift(db_url)
    ran: list[tuple[str, str]] = []

    @app.job("alpha")
    def alpha(ctx):  # type: ignore[no-untyped-def]
        ran.append(("first", ctx.run.job))

    @other.job("beta")
    def beta(ctx):  # type: ignore[no-untyped-def]
        ran.append(("second", ctx.run.job))

    try:
        # A backlog of a job no worker knows, ahead by priority, holds nobody up.
        for _ in range(200):
            app.start("gamma", priority=10)
        runs = [app.start(job) for job in ("alpha", "beta") * 5]
        with app.worker(concurrency=2), other.worker(concurrency=2):
            for run in runs:
                assert app.runs.wait(run.id, timeout="10s").status == "completed"
        assert sorted(set(ran)) == [("first", "alpha"), ("second", "beta")]
        assert len(ran) == 10
        assert len(app.runs.list(job="gamma", status="queued", limit=500)) == 200
    finally:
        other.close()


def test_worker_limited_to_queues_takes_runs_by_the_queue_they_were_started_on(
    fake_app: StackShift
) -> None:
    fake_app.job("syncInvoice", lambda ctx: "synced")
    fake_app.job("sendEmail", lambda ctx: "sent", queue="emails")
    billing = fake_app.queue("billing").enqueue("syncInvoice", {"invoiceId": "in_123"})
    bulk = fake_app.start("sendEmail", {}, queue_name="bulk")  # overrides the job's queue
    email = fake_app.start("sendEmail", {})
    assert (billing.queue, bulk.queue, email.queue) == ("billing", "bulk", "emails")

    assert fake_app.worker(queues=["emails"]).run_until_idle() == 1
    assert fake_app.runs.get(email.id).status == "completed"
    assert fake_app.runs.get(bulk.id).status == "queued"
    assert fake_app.worker(queues=["billing", "bulk"]).run_until_idle() == 2
    assert fake_app.runs.get(billing.id).result == "synced"
    assert fake_app.runs.get(bulk.id).result == "sent"


def test_threaded_worker_limited_to_a_queue_leaves_other_queues_alone(app: StackShift) -> None:
    app.job("work", lambda ctx: ctx.payload["n"])
    with app.worker(queues=["fast"]):
        fast = app.queue("fast").enqueue("work", {"n": 1})
        slow = app.queue("slow").enqueue("work", {"n": 2})
        assert app.runs.wait(fast.id, timeout="10s").result == 1
        time.sleep(0.2)
        assert app.runs.get(slow.id).status == "queued"


# -- writes that share a transaction -------------------------------------------------


def test_a_quick_run_is_not_held_back_by_a_slow_run_claimed_with_it(app: StackShift) -> None:
    release = threading.Event()

    @app.job("quick")
    def quick(ctx: Any) -> str:
        return "done"

    @app.job("slow")
    def slow(ctx: Any) -> str:
        release.wait(20)
        return "done"

    slow_run = app.start("slow")
    quick_run = app.start("quick")
    try:
        with app.worker(concurrency=2):  # one claim takes both
            wait_until(lambda: app.runs.get(quick_run.id).status == "completed", 5.0,
                       "the quick run to complete")
            assert app.runs.get(slow_run.id).status == "running"
            release.set()
            wait_until(lambda: app.runs.get(slow_run.id).status == "completed", 10.0,
                       "the slow run to complete")
    finally:
        release.set()
    assert app.runs.get(slow_run.id).attempt == 1


def test_expected_writes_share_one_transaction_and_a_missing_one_is_not_waited_for_long(
        app: StackShift) -> None:
    group = app._service.store.group_commit
    seen: list[Tx] = []  # kept alive: their ids stay unique

    def write(tx: Tx) -> None:
        tx.raw("SELECT 1", {})
        seen.append(tx)

    def late_writer(delay: float) -> threading.Thread:
        def go() -> None:
            time.sleep(delay)
            group.run(write)
        thread = threading.Thread(target=go)
        thread.start()
        return thread

    # Three writes 5 ms apart: announced, they share one transaction.
    group.expect(3, within=2.0)
    threads = [late_writer(i * 0.005) for i in range(3)]
    for thread in threads:
        thread.join(10)
    assert len(seen) == 3
    assert len({id(tx) for tx in seen}) == 1, "announced writes committed in separate transactions"

    # Not announced, the first commits without waiting for the others.
    seen.clear()
    threads = [late_writer(i * 0.05) for i in range(3)]
    for thread in threads:
        thread.join(10)
    assert len({id(tx) for tx in seen}) == 3

    # An announced write that never comes holds the next one up for `within` only.
    seen.clear()
    group.expect(2, within=0.2)
    started = time.monotonic()
    group.run(write)
    waited = time.monotonic() - started
    assert 0.1 <= waited < 2.0
    started = time.monotonic()
    group.run(write)  # the expectation is over
    assert time.monotonic() - started < 0.1

    # An announced write taken back is not waited for.
    group.expect(2, within=5.0)
    group.expect(-1, within=0)
    started = time.monotonic()
    group.run(write)
    assert time.monotonic() - started < 1.0


def test_one_statement_writes_that_share_a_transaction_fail_alone(app: StackShift) -> None:
    # Writes marked one-statement go without BEGIN and COMMIT on PostgreSQL; when
    # one of them is refused, the others still land and return their own result.
    store = app._service.store
    group = store.group_commit
    with store.db.write() as tx:
        tx.raw("CREATE TABLE one_statement_writes"
               " (v TEXT NOT NULL CHECK (v <> 'refused'))", {})

    def insert(tx: Tx, values: list[str]) -> list[str]:
        rows = ", ".join(f"(:v{i})" for i in range(len(values)))
        found = tx.raw(f"INSERT INTO one_statement_writes (v) VALUES {rows} RETURNING v",
                       {f"v{i}": value for i, value in enumerate(values)})
        return [row["v"].upper() for row in found]

    outcomes: dict[str, Any] = {}

    def writer(value: str) -> None:
        try:
            outcomes[value] = group.run_combined(insert, value, one_statement=True)
        except Exception as exc:
            outcomes[value] = exc

    group.expect(3, within=2.0)  # the three share a transaction
    threads = [threading.Thread(target=writer, args=(v,)) for v in ("a", "refused", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert (outcomes["a"], outcomes["c"]) == ("A", "C")
    assert isinstance(outcomes["refused"], Exception)
    assert "check" in str(outcomes["refused"]).lower()
    with store.db.read() as tx:
        kept = sorted(row["v"] for row in tx.raw("SELECT v FROM one_statement_writes", {}))
    assert kept == ["a", "c"]

    # Alone, such a write commits by itself.
    assert group.run_combined(insert, "d", one_statement=True) == "D"
    with store.db.read() as tx:
        assert len(tx.raw("SELECT v FROM one_statement_writes", {})) == 3


#: Texts that must come back as they went in: quotes, backslashes, escapes
#: spelled out, control characters, NUL, line separators, text outside the BMP.
AWKWARD_TEXTS = ['say "hi"', "back\\slash \\u0000 \\n", "tab\tnew\nline\r", "\x00\x01\x1f",
                 "caf\u00e9 \u65e5\u672c \U0001f389", "\u2028\u2029",
                 '{"looks": ["like", "json"]}', ""]


def test_texts_written_together_come_back_exactly(app: StackShift) -> None:
    # Starts, checkpoints and endings made at the same moment share one
    # statement each on PostgreSQL, which takes its rows as one JSON text.
    @app.job("echo_text")
    def echo_text(ctx: Any) -> dict[str, Any]:
        copied = ctx.step.run("copy", lambda: [ctx.payload["text"], ctx.payload["text"] * 2])
        return {"text": ctx.payload["text"], "copied": copied}

    group = app._service.store.group_commit
    started: dict[str, str] = {}

    def start(text: str) -> None:
        started[text] = app.start("echo_text", {"text": text}).id

    group.expect(len(AWKWARD_TEXTS), within=2.0)  # the starts share a transaction
    threads = [threading.Thread(target=start, args=(text,)) for text in AWKWARD_TEXTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(started) == sorted(AWKWARD_TEXTS)
    with app.worker(concurrency=len(AWKWARD_TEXTS)):
        wait_until(lambda: all(app.runs.get(i).status == "completed" for i in started.values()),
                   what="every run completed")
    for text, run_id in started.items():
        run = app.runs.get(run_id)
        assert run.payload == {"text": text}
        assert run.result == {"text": text, "copied": [text, text * 2]}
        assert [(s.name, s.result) for s in app.runs.steps(run_id)] == [("copy", [text, text * 2])]
        kinds = [entry.kind for entry in app.runs.timeline(run_id)]
        assert kinds[0] == "run.queued" and kinds[-1] == "run.completed"


def test_a_write_being_prepared_is_waited_for_and_one_never_made_is_not(
        app: StackShift) -> None:
    group = app._service.store.group_commit
    group.PREPARE_WAIT = 0.5  # roomy, for a loaded machine (1 ms by default)
    seen: list[Tx] = []  # kept alive: their ids stay unique
    ready = threading.Event()

    def write(tx: Tx) -> None:
        tx.raw("SELECT 1", {})
        seen.append(tx)

    def preparing_writer() -> None:
        with group.preparing():
            ready.set()
            time.sleep(0.05)  # checking and encoding, say
            group.run(write)

    # A transaction starting while another thread prepares its write takes it too.
    thread = threading.Thread(target=preparing_writer)
    thread.start()
    ready.wait(5)
    group.run(write)
    thread.join(10)
    assert len(seen) == 2
    assert len({id(tx) for tx in seen}) == 1, "the prepared write committed on its own"

    # A block left without a write holds nothing up afterwards.
    with group.preparing():
        pass
    started = time.monotonic()
    group.run(write)
    assert time.monotonic() - started < 0.25


def _claimed_with_the_last_lost(app: StackShift, count: int) -> tuple[list[str], dict[str, Any]]:
    """``count`` runs of a no-op job claimed by one worker, the last one handed
    back (its lease is gone): their ids, and the claims by id."""
    app.job("noop")(lambda ctx: None)
    ids = [app.start("noop").id for _ in range(count)]
    store = app._service.store
    claimed = {c.run.id: c for c in store.claim_runs("wkr_test", ["noop"], count, 30.0,
                                                      time.time())}
    assert set(claimed) == set(ids)
    assert store.release_run(claimed[ids[-1]].lease, time.time())
    return ids, claimed


def test_an_ending_whose_lease_was_lost_fails_alone_in_a_shared_transaction(
        app: StackShift) -> None:
    store = app._service.store
    (short_id, long_id, lost_id), claimed = _claimed_with_the_last_lost(app, 3)
    # Short and long results (SQLite writes them differently) are stored as sent.
    short = '{"note":"caf\u00e9 \\"quoted\\" \u2713\\n","n":1e-7}'
    long = json.dumps({"blob": "\u00e9\\\"" * 100_000}, ensure_ascii=False)
    results = {short_id: short, long_id: long, lost_id: short}
    ended: dict[str, str | None] = {}

    def finish(run_id: str) -> None:
        ended[run_id] = store.finish_attempt(
            claimed[run_id].lease, Outcome("completed", results[run_id]), [], time.time())

    store.expect_writes(3, 2.0)  # the three endings in one transaction
    threads = [threading.Thread(target=finish, args=(run_id,)) for run_id in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert ended == {short_id: "completed", long_id: "completed", lost_id: None}
    for run_id in (short_id, long_id):
        done = app.runs.get(run_id)
        assert (done.status, done.result) == ("completed", json.loads(results[run_id]))
        with store.db.read() as tx:
            stored = tx.raw("SELECT result FROM runs WHERE id = :id", {"id": run_id})
        assert stored[0]["result"] == results[run_id]
        assert [a.status for a in app.runs.attempts(run_id)] == ["completed"]
    assert app.runs.get(lost_id).status == "queued"
    assert "run.completed" not in [e.kind for e in app.runs.timeline(lost_id)]
    assert "completed" not in [a.status for a in app.runs.attempts(lost_id)]


def test_a_checkpoint_whose_lease_was_lost_fails_alone_in_a_shared_transaction(
        app: StackShift) -> None:
    store = app._service.store
    (kept_id, lost_id), claimed = _claimed_with_the_last_lost(app, 2)
    now = time.time()

    def step(key: str) -> StepWrite:
        return StepWrite(key=key, name=key, kind="run", function=None, status="completed",
                         result='"ok"', error=None, started_at=now, finished_at=now)

    outcomes: dict[str, Any] = {}

    def save(run_id: str) -> None:
        try:
            outcomes[run_id] = store.save_step(claimed[run_id].lease, step("s"), [],
                                               time.time(), 30.0)
        except LeaseLost as exc:
            outcomes[run_id] = exc

    store.expect_writes(2, 2.0)  # both checkpoints in one transaction
    threads = [threading.Thread(target=save, args=(run_id,))
               for run_id in (kept_id, lost_id)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert outcomes[kept_id] is False  # saved, no cancel requested
    assert isinstance(outcomes[lost_id], LeaseLost)
    assert [s.key for s in app.runs.steps(kept_id)] == ["s"]
    assert app.runs.steps(lost_id) == []
    assert app.runs.get(lost_id).status == "queued"
    kinds = [e.kind for e in app.runs.timeline(lost_id)]
    assert "step.completed" not in kinds



def test_run_until_idle_inside_an_event_loop_runs_async_handlers_on_a_loop_of_their_own(
        fake_app: StackShift) -> None:
    """As in an async test, or under Playwright's sync API: the calling thread runs
    an event loop already, and the async handler still runs, to its end."""
    @fake_app.job("inLoop")
    async def in_loop(ctx: AsyncJobContext[Any]) -> int:
        return int(await ctx.step.run("three", lambda: 3))

    fake_app.job("plain", lambda ctx: "plain")
    runs = [fake_app.start("inLoop"), fake_app.start("plain")]

    async def test_body() -> int:
        return run_until_idle(fake_app)

    assert asyncio.run(test_body()) == 2
    assert [fake_app.runs.get(run.id).result for run in runs] == [3, "plain"]


def test_run_until_idle_inside_an_event_loop_runs_a_plain_handlers_async_step(
        fake_app: StackShift) -> None:
    """A plain handler's step whose function is ``async def`` runs to completion
    on a loop of its own, even where the calling thread runs one (an async test);
    what it logs goes to its step."""
    async def fetch() -> int:
        logging.getLogger("shop").warning("fetched")
        return 5

    @fake_app.job("mixed")
    def mixed(ctx: Any) -> int:
        return int(ctx.step.run("fetch", fetch)) + 1

    run = fake_app.start("mixed")

    async def test_body() -> int:
        return run_until_idle(fake_app)

    assert asyncio.run(test_body()) == 1
    done = fake_app.runs.get(run.id)
    assert (done.status, done.result, done.error) == ("completed", 6, None)
    assert [(e.step, e.message) for e in fake_app.runs.logs(run.id)] == [("fetch", "fetched")]


def test_run_until_idle_fails_a_sync_attempt_at_its_timeout_as_a_worker_does(
        fake_app: StackShift) -> None:
    """It let a slow sync handler complete, where a worker fails its attempt at
    the timeout and records nothing the handler does after it (an async one it
    failed already): a test of the timeout passed in production, not in tests."""
    @fake_app.job("slow", timeout="0.5s", max_attempts=1)
    def slow(ctx: JobContext[Any]) -> str:
        ctx.step.run("before", lambda: "early")
        time.sleep(1)
        ctx.step.run("after", lambda: "late")
        return "late"

    run = fake_app.start("slow")
    assert run_until_idle(fake_app) == 1
    failed = fake_app.runs.get(run.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error.type, failed.error.message) == (
        "AttemptTimeoutError", "attempt ran longer than 0.5s")
    assert [step.key for step in fake_app.runs.steps(run.id)] == ["before"]


def test_run_until_idle_stops_at_the_invocations_it_is_given(fake_app: StackShift) -> None:
    """A job that starts another run each time never leaves the database idle:
    the helper passed every keyword to ``worker()``, which refused this one."""
    @fake_app.job("again")
    def again(ctx: JobContext[Any]) -> None:
        fake_app.start("again")

    fake_app.start("again")
    assert run_until_idle(fake_app, max_invocations=5) == 5
    assert [run.status for run in fake_app.runs.list(job="again", limit=10).items].count(
        "queued") == 1
    with pytest.raises(TypeError) as refused:
        run_until_idle(fake_app.worker())  # type: ignore[arg-type]
    assert str(refused.value) == (
        "run_until_idle takes a StackShift or AsyncStackShift client, got Worker")
