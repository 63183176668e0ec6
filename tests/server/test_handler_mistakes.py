"""A job definition or a handler that makes a mistake gets a clear, recorded
outcome: not a crash of its worker, not a silent loss, not a misleading record.

Each test runs on SQLite and PostgreSQL (the module's server and database), and
where a worker executes the runs, through an embedded worker on the database and
through a remote worker (in this process) of a real ``stackshift server`` on
127.0.0.1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from chatty import register_logging_loop

from stackshift import Backoff, RetryAfterError, Run, StackShift, ValidationError
from stackshift.testing import run_until_idle

Names = Callable[[str], str]


class Executor:
    """Starts a run and executes it until it ends or waits for a retry: with an
    embedded worker on the database, or a remote worker through the server."""

    def __init__(self, app: StackShift, kind: str) -> None:
        self.app = app
        self.kind = kind

    def run(self, job: str, payload: Any = None, timeout: float = 30.0) -> Run:
        if self.kind == "embedded":
            run = self.app.start(job, payload)
            run_until_idle(self.app)
            return self.app.runs.get(run.id)
        with self.app.worker(concurrency=1):
            run = self.app.start(job, payload)
            deadline = time.monotonic() + timeout
            while True:
                current = self.app.runs.get(run.id)
                if current.status in ("retrying", "failed", "completed", "cancelled"):
                    return current
                assert time.monotonic() < deadline, f"run not ended after {timeout}s: {current}"
                time.sleep(0.05)


@pytest.fixture(params=["embedded", "remote"])
def executor(request: pytest.FixtureRequest, engine: StackShift) -> Executor:
    if request.param == "embedded":
        return Executor(engine, "embedded")
    return Executor(request.getfixturevalue("remote"), "remote")


# -- 1. backoff jitter is a bool --------------------------------------------------------------


NOT_A_BOOL = ["no", "false", "", None, 2, -1, 0.5, 1.0, [True]]


@pytest.mark.parametrize("jitter", NOT_A_BOOL, ids=repr)
def test_a_backoff_jitter_that_is_not_a_bool_is_refused_when_the_job_is_defined(
        client: StackShift, unique: Names, jitter: Any) -> None:
    """``bool("no")`` is true: a jitter that is not a bool would silently mean
    jitter. It is refused where the job is defined, however the backoff is given,
    naming the field and the value; the job is not registered."""
    def handler(ctx: Any) -> None:
        return None

    given: list[Callable[[str], Any]] = [
        lambda name: client.job(name, handler, backoff={"jitter": jitter}),
        lambda name: client.job(name, backoff={"base": "2s", "jitter": jitter})(handler),
        lambda name: client.job(name, handler, backoff=Backoff(jitter=jitter)),
        lambda name: Backoff.parse({"jitter": jitter}),
    ]
    for n, define in enumerate(given):
        name = unique(f"jittery{n}")
        with pytest.raises(ValidationError) as caught:
            define(name)
        assert str(caught.value) == f"backoff.jitter: expected True or False, got {jitter!r}"
        assert client._registry.get(name) is None


@pytest.mark.parametrize(("jitter", "means"), [(True, True), (False, False), (1, True),
                                               (0, False)])
def test_a_backoff_jitter_of_a_bool_or_0_or_1_is_taken(
        client: StackShift, unique: Names, jitter: Any, means: bool) -> None:
    name = unique("jitterOk")
    client.job(name, lambda ctx: None, backoff={"base": "10s", "jitter": jitter})
    job = client._registry.get(name)
    assert job is not None and job.backoff.jitter is means
    assert Backoff(jitter=jitter).jitter is means
    if not means:
        assert [job.backoff.delay(n) for n in (1, 2, 3)] == [10.0, 20.0, 40.0]


@pytest.mark.parametrize(("backoff", "message"), [
    ({"factor": 0.5}, "backoff.factor: expected a number >= 1, got 0.5"),
    ({"jiter": False}, "backoff: unknown option(s) ['jiter']"),
    ("fast", "backoff: expected a Backoff or a dict, got 'fast'"),
])
def test_every_refused_backoff_is_a_validation_error(
        client: StackShift, unique: Names, backoff: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        client.job(unique("badBackoff"), lambda ctx: None, backoff=backoff)
    assert str(caught.value) == message


# -- 2. a RetryAfterError with no usable delay ------------------------------------------------


class NoSuperInit(RetryAfterError):
    """Forgets ``super().__init__``: no ``delay`` at all."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class OwnDelay(RetryAfterError):
    """Sets ``delay`` itself, to whatever it was given."""

    def __init__(self, delay: Any) -> None:
        Exception.__init__(self, f"rate limited, delay {delay!r}")
        self.delay = delay


class RaisingDelay(RetryAfterError):
    """A ``delay`` property that raises."""

    def __init__(self) -> None:
        Exception.__init__(self, "upstream busy")

    @property  # type: ignore[override]
    def delay(self) -> float:
        raise RuntimeError("no header to read it from")


BACKOFF = {"base": "1h", "cap": "3h", "jitter": False}


def _about(when: datetime | None, seconds: float) -> bool:
    assert when is not None
    expected = datetime.now(UTC) + timedelta(seconds=seconds)
    return abs((when - expected).total_seconds()) < 60


def _warnings(app: StackShift, run: Run) -> list[str]:
    return [e.message for e in app.runs.logs(run.id)
            if e.level == "WARNING" and e.logger == "stackshift.worker"]


@pytest.mark.parametrize(("error", "error_type", "message", "why"), [
    (lambda: NoSuperInit("rate limited"), "NoSuperInit", "rate limited",
     "NoSuperInit: it has no delay attribute (does its __init__ call "
     "super().__init__(delay, message)?)"),
    (lambda: OwnDelay("later"), "OwnDelay", "rate limited, delay 'later'",
     "OwnDelay: its delay: 'later' is not a duration (use e.g. '30s', '15m', '1h30m', '7d')"),
    (lambda: OwnDelay(float("nan")), "OwnDelay", "rate limited, delay nan",
     "OwnDelay: its delay: nan must be a finite, non-negative duration"),
    (lambda: OwnDelay(-5), "OwnDelay", "rate limited, delay -5",
     "OwnDelay: its delay: -5 must be a finite, non-negative duration"),
    (lambda: OwnDelay(None), "OwnDelay", "rate limited, delay None",
     "OwnDelay: its delay: expected a duration, got NoneType"),
    (lambda: OwnDelay(1e12), "OwnDelay", "rate limited, delay 1000000000000.0",
     "OwnDelay: its delay: 1000000000000.0 is longer than 100 years"),
    (lambda: RaisingDelay(), "RaisingDelay", "upstream busy",
     "RaisingDelay: reading its delay raised RuntimeError: no header to read it from"),
], ids=["no-super-init", "not-a-duration", "nan", "negative", "none", "past-100-years",
        "raising-property"])
def test_a_retry_after_error_without_a_usable_delay_is_retried_with_the_jobs_backoff(
        executor: Executor, unique: Names, error: Callable[[], Exception], error_type: str,
        message: str, why: str) -> None:
    """The worker neither crashes nor loses the attempt: it is recorded as failed
    with the handler's error, the run is retried after the job's own backoff, and
    the run's logs say why the error's delay was not used."""
    app = executor.app
    job = unique("rateLimited")

    @app.job(job, max_attempts=3, backoff=BACKOFF)
    def handler(ctx: Any) -> None:
        ctx.log.info("calling upstream")
        raise error()

    run = executor.run(job)
    assert run.status == "retrying", run
    assert run.error is not None
    assert (run.error.type, run.error.message) == (error_type, message)
    assert _about(run.next_attempt_at, 3600), run.next_attempt_at  # the backoff's base
    [attempt] = app.runs.attempts(run.id)
    assert attempt.status == "failed"
    assert attempt.error is not None and attempt.error.type == error_type
    assert _warnings(app, run) == [
        f"the RetryAfterError had no usable delay ({why}); the run is retried after the "
        "job's backoff instead"]
    logs = app.runs.logs(run.id)
    assert logs[0].message == "calling upstream"
    assert all(e.attempt == 1 for e in logs)


def _raising(error: Exception) -> Callable[[Any], None]:
    def handler(ctx: Any) -> None:
        raise error
    return handler


def test_a_retry_after_errors_delay_set_to_a_duration_is_used(
        executor: Executor, unique: Names) -> None:
    """A subclass that sets ``delay`` to a duration of its own (a string, a
    ``timedelta``) is retried after it, as ``RetryAfterError(delay)`` would be."""
    app = executor.app
    for n, delay in enumerate(["2h", timedelta(hours=2)]):
        job = unique(f"ownDelay{n}")
        app.job(job, _raising(OwnDelay(delay)), max_attempts=3, backoff=BACKOFF)
        run = executor.run(job)
        assert run.status == "retrying", run
        assert _about(run.next_attempt_at, 7200), run.next_attempt_at
        assert _warnings(app, run) == []


def test_a_retry_after_error_without_a_delay_on_the_last_attempt_fails_the_run(
        executor: Executor, unique: Names) -> None:
    app = executor.app
    job = unique("lastTry")

    @app.job(job, max_attempts=1, backoff=BACKOFF)
    def handler(ctx: Any) -> None:
        raise NoSuperInit("still limited")

    run = executor.run(job)
    assert run.status == "failed", run
    assert run.error is not None
    assert (run.error.type, run.error.message) == ("NoSuperInit", "still limited")
    [warning] = _warnings(app, run)
    assert warning.startswith("the RetryAfterError had no usable delay (NoSuperInit: it has "
                              "no delay attribute")
    assert warning.endswith("; no retry follows this attempt")


def test_a_group_with_a_retry_after_error_without_a_delay_takes_the_backoff(
        executor: Executor, unique: Names) -> None:
    """In a group, an error without a usable delay counts as any other error (the
    job's backoff, 1 h) next to a ``RetryAfterError`` that has one (30 min)."""
    app = executor.app
    job = unique("grouped")

    @app.job(job, max_attempts=3, backoff=BACKOFF)
    def handler(ctx: Any) -> None:
        raise ExceptionGroup("calls failed", [RetryAfterError("30m"), NoSuperInit("b")])

    run = executor.run(job)
    assert run.status == "retrying", run
    assert run.error is not None and run.error.type == "ExceptionGroup"
    assert _about(run.next_attempt_at, 3600), run.next_attempt_at
    [warning] = _warnings(app, run)
    assert "(NoSuperInit: it has no delay attribute" in warning


class BrokenStr(RetryAfterError):
    """Forgets ``super().__init__`` and has a ``__str__`` that reads ``delay``."""

    def __init__(self) -> None:
        pass

    def __str__(self) -> str:
        return f"retry after {self.delay}s"


def test_an_error_whose_str_raises_is_still_recorded(
        executor: Executor, unique: Names) -> None:
    app = executor.app
    job = unique("brokenStr")

    @app.job(job, max_attempts=3, backoff=BACKOFF)
    def handler(ctx: Any) -> None:
        raise BrokenStr()

    run = executor.run(job)
    assert run.status == "retrying", run
    assert run.error is not None and run.error.type == "BrokenStr"
    assert run.error.message == ("<str() of the BrokenStr raised AttributeError: "
                                 "'BrokenStr' object has no attribute 'delay'>")
    assert len(_warnings(app, run)) == 1


# -- 3. run logs keep stacks and messages that cannot be formatted ----------------------------


def test_a_record_logged_with_stack_info_keeps_its_stack(
        executor: Executor, unique: Names) -> None:
    app = executor.app
    job = unique("stacked")

    def where_it_was_logged(ctx: Any) -> None:
        ctx.log.warning("slow path taken", stack_info=True)
        try:
            {}["missing"]
        except KeyError:
            ctx.log.exception("lookup %s failed", "missing", stack_info=True)

    app.job(job, where_it_was_logged, max_attempts=1)
    run = executor.run(job)
    assert run.status == "completed", run.error
    stacked, both = app.runs.logs(run.id)
    head, stack = stacked.message.split("\n", 1)
    assert head == "slow path taken"
    assert stack.startswith("Stack (most recent call last):\n")
    assert "in where_it_was_logged" in stack
    assert 'ctx.log.warning("slow path taken", stack_info=True)' in stack
    # As logging.Formatter lays them out: message, traceback, then stack.
    lines = both.message.split("\n")
    assert lines[0] == "lookup missing failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert "KeyError: 'missing'" in both.message
    assert both.message.index("KeyError: 'missing'") < both.message.index("Stack (most recent")


def test_a_message_that_cannot_be_formatted_keeps_its_text_args_and_the_error(
        executor: Executor, unique: Names, monkeypatch: pytest.MonkeyPatch) -> None:
    # pytest's own log capture raises on such a record (to show the mistake in a
    # test); outside pytest logging reports it on stderr and carries on.
    monkeypatch.setattr(logging, "raiseExceptions", False)
    app = executor.app
    job = unique("badFormat")

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    def handler(ctx: Any) -> str:
        ctx.log.info("%d items left", "x")
        ctx.log.info("two %s %s", "args")
        ctx.log.info("%s", Unprintable())
        try:
            raise ValueError("boom")
        except ValueError:
            ctx.log.error("failed for %d", "abc", exc_info=True)
        return "done"

    app.job(job, handler, max_attempts=1)
    run = executor.run(job)
    assert (run.status, run.result) == ("completed", "done"), run.error
    entries = app.runs.logs(run.id)
    assert [e.message.split("\n")[:2] for e in entries[:2]] == [
        ["%d items left", "[formatting the message failed: TypeError: %d format: a real "
         "number is required, not str; its arguments: ('x',)]"],
        ["two %s %s", "[formatting the message failed: TypeError: not enough arguments "
         "for format string; its arguments: ('args',)]"],
    ]
    assert entries[2].message == (
        "%s\n[formatting the message failed: RuntimeError: no repr; its arguments: "
        "<repr() of a tuple raised RuntimeError>]")
    failed = entries[3].message.split("\n")
    assert failed[0] == "failed for %d"
    assert failed[1].startswith("[formatting the message failed: TypeError: %d format")
    assert failed[1].endswith("its arguments: ('abc',)]")
    assert failed[2] == "Traceback (most recent call last):"
    assert failed[-1] == "ValueError: boom"
    assert entries[3].level == "ERROR"


def test_a_field_that_is_no_json_is_kept_as_text_and_fails_nothing(
        executor: Executor, unique: Names) -> None:
    # An int too long to print, or a key whose str() raises, failed the run.
    app = executor.app
    job = unique("oddFields")

    class Key:
        def __str__(self) -> str:
            raise RuntimeError("no str for this key")

    def handler(ctx: Any) -> str:
        ctx.log.info("count", extra={"n": 10**5000, "small": 7})
        ctx.log.info("map", extra={"m": {Key(): 1, "k": 2}})
        return "done"

    app.job(job, handler, max_attempts=1)
    run = executor.run(job)
    assert (run.status, run.result) == ("completed", "done"), run.error
    count, mapped = app.runs.logs(run.id)
    assert (count.message, count.fields) == (
        "count", {"n": "<repr() of a int raised ValueError>", "small": 7})
    assert (mapped.message, mapped.fields) == (
        "map", {"m": {"<str() of a Key raised RuntimeError>": 1, "k": 2}})


def test_ctx_log_is_kept_after_dict_config_disabled_the_loggers_there_were(
        executor: Executor, unique: Names) -> None:
    # logging.config.dictConfig's default (disable_existing_loggers) disables
    # stackshift.run, made when stackshift is imported: ctx.log's records were lost.
    app = executor.app
    job = unique("afterDictConfig")
    run_logger = logging.getLogger("stackshift.run")
    run_logger.disabled = True  # what dictConfig does to the loggers there were
    try:
        app.job(job, lambda ctx: ctx.log.info("still kept"), max_attempts=1)
        run = executor.run(job)
    finally:
        run_logger.disabled = False
    assert run.status == "completed", run.error
    assert [e.message for e in app.runs.logs(run.id)] == ["still kept"]


# -- 4. a remote worker holds a bounded amount of a run's records ----------------------------


def test_a_remote_worker_sends_a_logging_loops_records_ahead_and_keeps_every_one(
        remote: StackShift, unique: Names) -> None:
    """A handler logging 13 MB in a tight loop between two checkpoints (twice):
    its remote worker sends the records ahead of the checkpoints, with lease
    renewals, a batch at a time, and holds no more than one batch; every record
    is stored once, in order."""
    job = unique("remoteLoop")
    held: list[int] = []
    register_logging_loop(remote, job, held)

    with remote.worker(concurrency=1):
        run = remote.start(job)
        done = remote.runs.wait(run.id, timeout="120s")
    assert (done.status, done.result, done.error) == ("completed", "done", None)
    # About 330 bytes a record as sent: a batch of 128 KiB is some 400 records.
    assert max(held) < 500, held
    entries = remote.runs.logs(run.id)
    assert [e.message.split()[:2] for e in entries] == [
        [segment, f"{n:05d}"] for segment in ("a", "b") for n in range(20_000)]
    assert {(e.level, e.attempt) for e in entries} == {("INFO", 1)}


def test_bounded_logs_keep_the_first_and_the_latest_and_count_the_rest() -> None:
    from stackshift.remote_worker import BoundedLogs, sent_size
    from stackshift.store.base import LogWrite

    logs = BoundedLogs(budget=4096)
    records = [LogWrite(float(n), "INFO", "app", f"record {n:03d}", "s", 1) for n in range(200)]
    for record in records:
        logs.add(record)
        assert logs.held_bytes <= 4096 - 1024
    taken = logs.take()
    at = next(n for n, r in enumerate(taken) if r.level == "WARNING")
    head, warning, tail = taken[:at], taken[at], taken[at + 1:]
    assert head == records[:len(head)] and tail == records[-len(tail):]
    dropped = records[len(head):len(records) - len(tail)]
    assert warning.message.startswith(
        f"[... {len(dropped)} log records ({sum(map(sent_size, dropped))} bytes) dropped here")
    assert (warning.at, warning.step, warning.attempt) == (dropped[0].at, "s", 1)
    assert sum(map(sent_size, taken)) <= 4096
    # Taken, they are gone: the next checkpoint starts again from its first record.
    assert len(logs) == 0 and logs.take() == []
    logs.add(records[0])
    assert logs.take() == [records[0]]
