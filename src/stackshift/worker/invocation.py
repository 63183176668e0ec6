"""One invocation of a handler for a claimed run: replay, checkpoints, the ending.

The sync and async step APIs (``stackshift.context``) are thin: they call
``plan_*`` to decide (replay or run), run the user's function their own way,
and call ``record_*`` to make the result durable.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NoReturn, TypeVar

import pydantic

from ..awaits import Issued, StepsRunning
from ..durations import span, to_datetime
from ..engine import outcomes
from ..errors import (
    CancelSignal,
    LeaseLost,
    NonDeterminismError,
    NonRetriableError,
    PayloadTooLargeError,
    StepResultNotJSONError,
    StepResultTooLargeError,
    Suspend,
    ValidationError,
)
from ..jobs import Job, check_name, function_parts, joined_name, qualified_name, same_function
from ..keywords import NOT_GIVEN, accepted_keywords, missing, unknown_keyword
from ..models import Event, Run
from ..runlogs import CURRENT, CURRENT_STEP, engine_call
from ..serialization import encode, loads
from ..service import Service
from ..store.base import ClaimedRun, LogWrite, Outcome, StepWrite
from ..store.database import SCHEMA_MISSING, is_database_unavailable, is_schema_missing

log = logging.getLogger("stackshift.worker")

#: Why an invocation records nothing more (see Invocation.abandon).
Abandoned = Literal["lost", "handed back", "timed out"]

T = TypeVar("T")

#: One record per failed attempt, for whoever reads the worker's output: WARNING
#: when the run is retried, ERROR when it failed for good. The run keeps the whole
#: error with its traceback.
attempts_log = logging.getLogger("stackshift.attempts")
#: Characters of an error's message in that record (its whitespace made single spaces).
SAID_OF_ERROR = 500


@dataclass(frozen=True)
class StepPlan:
    """What to do at a step call: return a recorded result, or run and record."""

    key: str
    name: str
    function: str | None
    replayed: bool
    result: Any = None
    started_at: float = 0.0


class PendingLogs(abc.ABC):
    """Where an invocation keeps its log records not yet written: each checkpoint (a
    step's result, a sleep, a wait, the attempt's ending) takes them all. A worker
    on the database writes them ahead of checkpoints too (:class:`LogsWrittenAhead`);
    a store may hold them otherwise (``store.pending_logs(write)``: a remote
    worker's keep within a budget, and are sent ahead where the server takes them)."""

    @abc.abstractmethod
    def add(self, record: LogWrite) -> None: ...

    @abc.abstractmethod
    def take(self) -> list[LogWrite]: ...

    @abc.abstractmethod
    def put_back(self, records: list[LogWrite]) -> None:
        """Hold ``records`` (taken for a write that was refused) again, ahead of
        those held now."""

    @contextlib.contextmanager
    def ahead(self) -> Iterator[list[LogWrite]]:
        """Records to write before the next checkpoint, with a lease renewal: none here."""
        yield []

    @abc.abstractmethod
    def __len__(self) -> int: ...


class LogsWrittenAhead(PendingLogs):
    """A worker's log records: besides each checkpoint, written ahead of
    it with the lease's renewals (:meth:`ahead`, every third of the lease) and, once
    ``FLUSH_RECORDS`` records or ``FLUSH_CHARS`` characters of messages wait, at
    once by the thread that logs (``write(records)``, a renewal of the lease that
    writes them).

    So a long step's records show while it runs, and a handler that logs in a tight
    loop between checkpoints holds a bounded number of them in memory, keeping
    every one. Records are written in the order they were logged: a checkpoint
    takes its records only once a write ahead in flight is done.
    """

    FLUSH_RECORDS = 1000
    FLUSH_CHARS = 256 * 1024
    #: Seconds the thread that logs leaves the records to the renewals after a write
    #: ahead failed (the database unreachable): logging does not wait on it each time.
    PAUSE_AFTER_FAILURE = 1.0

    def __init__(self, write: Callable[[list[LogWrite]], None]) -> None:
        self._records: list[LogWrite] = []
        self._write = write
        self._chars = 0
        self._lock = threading.Lock()  # the list
        self._writing = threading.Lock()  # held from taking records until they are written
        self._pause_until = 0.0

    def add(self, record: LogWrite) -> None:
        if (not self._hold(record) or time.monotonic() < self._pause_until
                or not self._writing.acquire(blocking=False)):
            return  # a write ahead in flight takes what it finds next time
        try:
            records = self._swap()
            try:
                self._write(records)
            except Exception:
                self._put_back(records)
                self._pause_until = time.monotonic() + self.PAUSE_AFTER_FAILURE
        finally:
            self._writing.release()

    def take(self) -> list[LogWrite]:
        with self._writing:
            return self._swap()

    @contextlib.contextmanager
    def ahead(self) -> Iterator[list[LogWrite]]:
        """The records pending now, for a renewal to write; put back should it fail
        (those left in the list then: a renewal written in parts empties it of
        those it wrote). None while another write ahead is in flight (it holds
        the older ones)."""
        if not self._writing.acquire(blocking=False):
            yield []
            return
        try:
            records = self._swap()
            try:
                yield records
            except BaseException:
                self._put_back(records)
                raise
        finally:
            self._writing.release()

    def _hold(self, record: LogWrite) -> bool:
        """Keep ``record`` until it is written; whether enough wait to write them now."""
        with self._lock:
            self._records.append(record)
            self._chars += record.chars
            return len(self._records) >= self.FLUSH_RECORDS or self._chars >= self.FLUSH_CHARS

    def _swap(self) -> list[LogWrite]:
        """All the records held, oldest first; none are held then."""
        with self._lock:
            records, self._records, self._chars = self._records, [], 0
        return records

    def put_back(self, records: list[LogWrite]) -> None:
        self._put_back(records)

    def _put_back(self, records: list[LogWrite]) -> None:
        """Hold ``records`` (a write that failed) again, ahead of those held now."""
        with self._lock:
            self._records[:0] = records
            self._chars += sum(record.chars for record in records)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class Invocation:
    def __init__(
        self, service: Service, job: Job, claimed: ClaimedRun, lease_seconds: float
    ) -> None:
        self.service = service
        self.store = service.store
        self.clock = service.clock
        self.job = job
        self.run: Run = claimed.run
        self.lease = claimed.lease
        self.attempts_used = claimed.lease.attempt - claimed.retry_base
        self.steps = claimed.steps
        self.lease_seconds = lease_seconds
        self._occurrences: Counter[str] = Counter()
        make_logs: Callable[[Callable[[list[LogWrite]], None]], PendingLogs] | None = getattr(
            self.store, "pending_logs", None)
        self._logs = (LogsWrittenAhead(self._write_ahead) if make_logs is None
                      else make_logs(self._write_ahead))
        self.cancel_requested = False
        #: why this worker no longer records the attempt (see :meth:`abandon`):
        #: "lost" (the lease, to another worker), "handed back" (the worker
        #: stopped) or "timed out" (the attempt was failed at its timeout)
        self.abandoned_for: Abandoned | None = None
        #: the run was parked (a sleep or a wait): the invocation ends here, and a
        #: step the handler still calls (in a ``finally``, say) raises Suspend again
        self.suspended = False
        #: Sleeps and waits gathered together take turns: once one parks the run,
        #: the others find it parked rather than write with the lease it gave up.
        self._pausing = threading.Lock()
        #: the handler has returned or raised: its ctx takes no more steps
        self.ended = False
        #: why the attempt's outcome could not be recorded, if it could not (a push
        #: route answers with it, so that the server hands the run back)
        self.unrecorded: Exception | None = None
        #: when the store last told this invocation about its run (the claim, a
        #: checkpoint, a renewal asked at a step boundary): time.monotonic()
        self._heard_at = time.monotonic()
        #: a NonDeterminismError fails the run even if the handler swallowed it
        self.fatal: BaseException | None = None
        #: errors of ctx.step and ctx.state calls the engine refused (see :meth:`refuse`)
        self.refused: list[BaseException] = []
        #: an async handler's ctx.step and ctx.state calls, to tell one never awaited
        self.issued = Issued()
        #: an async handler's steps running now, let end before the attempt ends or
        #: the run is parked
        self.steps_running = StepsRunning()
        #: called once the handler has returned or raised, before its ending is
        #: recorded; gets whether an ending will be recorded
        self.on_return: Callable[[bool], None] | None = None

    # -- bookkeeping ---------------------------------------------------------------

    def add_log(self, level: str, logger: str, message: str, step: str | None,
                fields: str | None = None) -> None:
        self._logs.add(
            LogWrite(self.clock.now(), level, logger, message, step, self.lease.attempt, fields)
        )

    def take_logs(self) -> list[LogWrite]:
        return self._logs.take()

    def logs_ahead(self) -> contextlib.AbstractContextManager[list[LogWrite]]:
        """Records a lease renewal may write for this invocation (see :class:`LogsWrittenAhead`)."""
        return self._logs.ahead()

    def _write_ahead(self, records: list[LogWrite]) -> None:
        """Write ``records`` now, with a renewal of the lease (nothing if it was lost)."""
        asked_at = time.monotonic()
        with engine_call():  # what the store logs meanwhile belongs to no run
            cancels, lost = self.store.renew_leases([self.lease], self.clock.now(),
                                                    self.lease_seconds, {self.run.id: records})
        self.renewed(cancels, lost, asked_at)

    def returned(self, error: BaseException | None) -> None:
        """The handler is done (``error``: what it raised): its worker slot may
        take the next run while the ending is recorded (the run stays leased
        until then)."""
        self.ended = True
        error = _signal(error)
        if self.on_return is not None:
            # A suspended run was written when it suspended; an abandoned one
            # writes nothing: neither has an ending left to record.
            self.on_return(not (self.suspended or isinstance(error, (Suspend, LeaseLost))))

    def next_key(self, name: str) -> str:
        self._may_step(name)
        self._occurrences[name] += 1
        n = self._occurrences[name]
        return name if n == 1 else f"{name}#{n}"

    #: Seconds after which a step boundary asks the store about the run first
    #: (see :meth:`boundary`).
    FRESH_FOR = 0.05

    def _may_step(self, name: str) -> None:
        """Refuse a step ``name`` the handler may not take now: after its handler
        ended, inside another step's function, or once the run was parked."""
        if self.ended:
            raise RuntimeError(
                f"step {name!r}: the handler of run {self.run.id} has already ended; its"
                " ctx takes no more steps (a thread or task the handler starts must end"
                " before it returns)")
        if self.suspended:
            raise Suspend(self.run.id)
        inside = CURRENT_STEP.get()
        if inside is not None:
            error = RuntimeError(
                f"step {name!r} was called inside the function of step {inside!r}: steps"
                " do not nest (a replay returns the outer step's result without calling"
                " its function); call the steps one after the other in the handler")
            self.refuse(error, call="this ctx.step call inside another step")
            raise error

    def boundary(self) -> None:
        """Stop here if the run was cancelled or this attempt was given up.

        Checkpoints tell the worker of a cancel, and so does the heartbeat, but
        a handler that works between two steps for longer than ``FRESH_FOR``
        could miss one requested meanwhile: the boundary then renews the lease
        first (:meth:`ask_store`), which reports a cancel or a lost lease.
        Steps back to back, each checkpoint fresh, cost nothing more.
        """
        if self.suspended:
            raise Suspend(self.run.id)
        if self.stale():
            self.ask_store()
        if self.abandoned:
            raise LeaseLost(self.run.id)
        if self.cancel_requested:
            raise CancelSignal(self.run.id)

    def stale(self) -> bool:
        """Whether the next boundary asks the store first."""
        return (not (self.abandoned or self.cancel_requested)
                and time.monotonic() - self._heard_at > self.FRESH_FOR)

    def ask_store(self) -> None:
        """Renew the run's lease, taking in a cancel or a lost lease it reports.

        A store that cannot be reached now leaves things as they are: the
        step's own checkpoint and the heartbeat deal with that.
        """
        asked_at = time.monotonic()
        try:
            cancels, lost = self.store.renew_leases([self.lease], self.clock.now(),
                                                    self.lease_seconds)
        except Exception as exc:
            if outage_of(exc) is not None:  # an outage: one line, as the worker says them
                log.warning("run %s: could not ask the store for a cancel (%s: %s)",
                            self.run.id, type(exc).__name__, first_line(exc))
            else:
                log.warning("run %s: could not ask the store for a cancel", self.run.id,
                            exc_info=True)
            return
        self.renewed(cancels, lost, asked_at)

    def renewed(self, cancels: set[str], lost: set[str], asked_at: float) -> None:
        """Take in a renewal of this invocation's lease (asked for at ``asked_at``,
        ``time.monotonic()``): the store's answer of runs asked to cancel and
        runs whose lease was lost (rescued elsewhere: stop at the next step)."""
        self._heard_at = max(self._heard_at, asked_at)
        if self.run.id in lost:
            self.abandon("lost")
        if self.run.id in cancels:
            self.cancel_requested = True

    @property
    def abandoned(self) -> bool:
        """This worker records nothing more of the attempt."""
        return self.abandoned_for is not None

    def abandon(self, why: Abandoned) -> None:
        """Record nothing more of this attempt; the handler stops at its next step."""
        if self.abandoned_for is None:
            self.abandoned_for = why

    def _replay(self, key: str, kind: str, function: tuple[str, str] | None) -> Any:
        """The step recorded at ``key``, if any, checked against what this replay
        reached: a step of ``kind`` calling ``function`` (its module and name)."""
        step = self.steps.get(key)
        if step is None:
            return None
        if step.kind != kind or (function is not None and (
                step.function is None or not same_function(step.function, *function))):
            function_name = None if function is None else joined_name(*function)
            recorded = f"{step.kind} step" + (f" of {step.function}" if step.function else "")
            now = f"{kind} step" + (f" of {function_name}" if function_name else "")
            self._nondeterministic(
                f"step {key!r} was recorded as a {recorded}, but this replay reached a {now}")
        return step

    def _nondeterministic(self, message: str) -> NoReturn:
        """Fail the run: this replay took another path than the one recorded. The
        run fails even if the handler catches the error (see :attr:`fatal`)."""
        error = NonDeterminismError(message)
        self.fatal = error
        raise error

    # -- refused calls ---------------------------------------------------------------

    def refuse(self, exc: BaseException, api: str = "ctx.step", call: str | None = None) -> None:
        """Mark ``exc``, raised by the engine's own checks of the arguments of a
        call of ``api`` (``ctx.step``, ``ctx.state``), as a refusal: if the handler
        lets it out, the run fails at once, as for a ``NonRetriableError`` (every
        attempt would make the same call and be refused the same way). The error
        keeps its type and message. ``call``: what was refused, when it is not
        the call's arguments."""
        if self.was_refused(exc):
            return
        self.refused.append(exc)
        if call is None:
            call = f"this {api} call's arguments"
        exc.add_note(f"StackShift refused {call}: {_NOT_RETRIED}")

    def refusing(self, api: str = "ctx.step") -> _Refusing:
        """Around the checks of the arguments of a call of ``api``: what they
        raise is a refusal (:meth:`refuse`). Every step call enters one, replays
        included: a plain object is cheaper to make than a generator's."""
        return _Refusing(self, api)

    def was_refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a refusal itself (not one the handler wrapped or copied),
        or a group of refusals only (calls made in an ``asyncio.TaskGroup``): one
        other error in a group may have another end on the next attempt."""
        if isinstance(exc, BaseExceptionGroup):
            return all(self.was_refused(inner) for inner in exc.exceptions)
        return any(exc is known for known in self.refused)

    @contextlib.contextmanager
    def in_step(self, key: str) -> Iterator[None]:
        token = CURRENT_STEP.set(key)
        try:
            yield
        finally:
            CURRENT_STEP.reset(token)

    # -- ctx.step.run ----------------------------------------------------------------

    def step_key(self, name: str, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> str:
        """Check a ``ctx.step.run`` call and give it its identity (``name#n``).

        The identity follows the order of the calls: an async handler takes it
        before its first ``await``, so that steps started together
        (``asyncio.gather``) get the same keys on every invocation. A call
        refused (a bad name, ``fn`` not callable or left out, a keyword ``fn``
        does not take) takes none.
        """
        with self.refusing():
            try:
                if callable(name):
                    called = getattr(name, "__name__", "fn")
                    raise TypeError(
                        "ctx.step.run() takes the step's name first, then its function and"
                        f" arguments: ctx.step.run({called!r}, {called}, ...)")
                check_name(name, "step name")
                if not callable(fn):
                    raise TypeError(
                        f"step {name!r}: {_short_repr(fn)} is not callable; ctx.step.run()"
                        " takes the function to run, not what it returns: ctx.step.run("
                        f"{name!r}, fn, *args, **kwargs) calls fn(*args, **kwargs)")
            except (ValidationError, TypeError):
                left_out = [arg for arg, value in (("name", name), ("fn", fn))
                            if value is NOT_GIVEN]
                if left_out:
                    raise missing("ctx.step.run()", left_out) from None
                raise
            if kwargs:
                _check_keywords(name, fn, kwargs)
        return self.next_key(name)

    def plan_run(self, name: str, fn: Callable[..., Any], key: str) -> StepPlan:
        parts = function_parts(fn)
        function = joined_name(*parts)
        step = self._replay(key, "run", parts)
        if step is not None:
            return StepPlan(key, name, function, True, step.result)
        self.boundary()
        return StepPlan(key, name, function, False, started_at=self.clock.now())

    def record_completed(self, plan: StepPlan, value: Any) -> Any:
        """Save the step's result; return it as a replay would (through JSON).

        A result that cannot be stored (not JSON, or over the limit) fails the
        step with an error that fails the run at once unless the handler
        catches it: the function has run, and another attempt would only run
        it (and its side effects) again to fail the same way.
        """
        try:
            text = self._encode_result(plan, value)
        except (StepResultNotJSONError, StepResultTooLargeError) as exc:
            self.record_failed(plan, exc)
            raise
        try:
            self._save(StepWrite(plan.key, plan.name, "run", plan.function, "completed", text,
                                 None, plan.started_at, self._finished_at(plan)))
        except PayloadTooLargeError as exc:
            refused = StepResultTooLargeError(
                f"{_not_sent(f'result of step {plan.key!r}', text, exc)}. {_ALREADY_RAN}")
            self.record_failed(plan, refused)
            raise refused from None
        return loads(text)

    def _encode_result(self, plan: StepPlan, value: Any) -> str:
        try:
            return encode(value, what=f"result of step {plan.key!r}",
                          limit=self.service.settings.max_step_result_bytes,
                          too_large=StepResultTooLargeError)
        except StepResultTooLargeError as exc:
            raise StepResultTooLargeError(
                f"{exc}. {_ALREADY_RAN} Return less from the step's function (store large"
                " data elsewhere and return a reference to it), or raise the limit with"
                f" {self.service.raised_by('max_step_result_bytes')}") from None
        except (TypeError, ValidationError) as exc:  # ValidationError: a lone surrogate
            raise StepResultNotJSONError(
                f"{exc}. {_ALREADY_RAN} Return JSON from the step's function instead (for"
                " example str() of a Decimal, list() of a set)") from None

    def record_failed(self, plan: StepPlan, exc: BaseException) -> None:
        self._save(StepWrite(plan.key, plan.name, "run", plan.function, "failed", None,
                             outcomes.error_dict(exc), plan.started_at, self._finished_at(plan)))

    def _finished_at(self, plan: StepPlan) -> float:
        # Never before the step started, should the wall clock step back meanwhile:
        # a server refuses such a step (422).
        return max(plan.started_at, self.clock.now())

    def _save(self, write: StepWrite) -> None:
        asked_at = time.monotonic()
        logs = self.take_logs()
        try:
            if self._through_outages(lambda: self.store.save_step(
                    self.lease, write, logs, self.clock.now(), self.lease_seconds)):
                self.cancel_requested = True
        except PayloadTooLargeError:  # refused for its size: nothing was written
            self._logs.put_back(logs)
            raise
        self._heard_at = asked_at

    #: Seconds between tries of a write while the database is unavailable, at first
    #: and at most (doubling in between).
    OUTAGE_PAUSES = (0.05, 2.0)

    def _through_outages(self, write: Callable[[], T]) -> T:
        """``write()``, tried again while the database is unavailable (a connection
        dropped, a server restarting) or, for a remote worker, the server is (not
        reached, its answer lost, a 503), for as long as the run's lease may still be
        this worker's: a blip costs the attempt nothing. Only for writes that can
        be made twice: a step's checkpoint (a completed step keeps its first
        result), a wait (one whose step completed gives the event it took),
        parking a run, ending the attempt (the lease they check is gone once they
        are made). Past the lease, the error is raised as before."""
        pause, longest = self.OUTAGE_PAUSES
        while True:
            try:
                return write()
            except Exception as exc:
                what = outage_of(exc)
                if what is None:
                    raise
                if time.monotonic() + pause - self._heard_at >= self.lease_seconds:
                    raise
                log.warning("run %s: %s (%s: %s); trying again in"
                            " %s", self.run.id, what, type(exc).__name__,
                            first_line(exc),
                            span(pause))
            time.sleep(pause)
            pause = min(pause * 2, longest)

    # -- sleeps and waits ------------------------------------------------------------

    def pause_key(self, name: str) -> str:
        """Check a sleep's name and give it its identity (see :meth:`step_key`)."""
        with self.refusing():
            check_name(name, "step name")
        return self.next_key(name)

    def sleep_until(self, name: str, until: Callable[[float], float],
                    key: str | None = None) -> None:
        """Complete at once if due, else park the run (raises :class:`Suspend`)."""
        if key is None:
            key = self.pause_key(name)
        if self._replay(key, "sleep", None) is not None:
            return
        with self._pausing:
            self.boundary()
            now = self.clock.now()
            wake = until(now)
            write = StepWrite(key, name, "sleep", None, "waiting", None, None, now, None)
            if wake <= now:
                self._save(StepWrite(key, name, "sleep", None, "completed", "null", None, now,
                                     now))
                return
            logs = self.take_logs()
            self._through_outages(
                lambda: self.store.suspend_for_sleep(self.lease, write, wake, logs, now))
            self.suspended = True
        self.service.notifier.due(wake)
        raise Suspend(self.run.id)

    def wait_for_event(
        self, name: str, correlation_key: str | None, timeout: float, on_timeout: str,
        key: str | None = None,
    ) -> Event | None:
        if key is None:
            key = self.next_key(name)
        step = self._replay(key, "wait", None)
        if step is not None:
            data = step.result
            if data is None:
                return None  # timed out with on_timeout="continue": no event to compare
            recorded = data.get("correlation_key")
            if recorded != correlation_key:
                self._nondeterministic(
                    f"step {key!r} was recorded as a wait for"
                    f" {_awaited(data.get('name', name), recorded)}, but this replay waits"
                    f" for {_awaited(name, correlation_key)}: its recorded event is not"
                    " returned for another key")
            return Event(
                id=data["id"],
                name=data["name"],
                payload=data["payload"],
                correlation_key=data["correlation_key"],
                received_at=to_datetime(data["received_at"]),  # type: ignore[arg-type]
                idempotency_key=data.get("idempotency_key"),
            )
        with self._pausing:
            self.boundary()
            now = self.clock.now()
            write = StepWrite(key, name, "wait", None, "waiting", None, None, now, None)
            logs = self.take_logs()
            event = self._through_outages(lambda: self.store.wait_for_event(
                self.lease, write, name, correlation_key or "", now + timeout, on_timeout, logs,
                now, self.lease_seconds))
            if event is None:
                self.suspended = True
        if event is None:
            self.service.notifier.due(now + timeout)
            raise Suspend(self.run.id)
        return event

    # -- the ending ------------------------------------------------------------------

    def payload(self) -> Any:
        expected = self.job.payload_type
        if expected is None:
            return self.run.payload
        try:
            return expected.validate(self.run.payload)
        except Exception as exc:
            raise NonRetriableError(
                f"payload does not match {expected.name}: {_mismatch(exc)}") from exc

    def complete(self, value: Any) -> None:
        if self.fatal is not None:
            self.fail(self.fatal)
            return
        try:
            text = encode(value, what="job result",
                          limit=self.service.settings.max_step_result_bytes,
                          too_large=StepResultTooLargeError)
        except (TypeError, ValidationError) as exc:  # over the limit, a lone surrogate
            self.fail(NonRetriableError(_not_a_result(self.job, value, exc)))
            return
        self._finish(Outcome("completed", result=text))

    def fail(self, exc: BaseException) -> None:
        if self.fatal is not None:
            exc = self.fatal
        # One time for the ending and the retry time counted from it: formatting the
        # error (reading source lines, a slow __str__) must not stamp the ending
        # after the retry it schedules.
        now = self.clock.now()
        outcome = self._failure(exc, now)
        for reason in outcomes.unusable_retry_after(exc):
            self._warn_unusable_delay(reason, outcome)
        self._finish(outcome, now)

    def _failure(self, exc: BaseException, now: float) -> Outcome:
        return outcomes.failure(
            exc,
            retriable=not self.was_refused(exc),
            attempts_used=self.attempts_used,
            max_attempts=self.run.max_attempts,
            backoff=self.job.backoff,
            now=now,
        )

    def _warn_unusable_delay(self, reason: str, outcome: Outcome) -> None:
        """Say in the run's logs that a ``RetryAfterError`` had no usable delay,
        and what the attempt's ending did instead."""
        if outcome.status == "retrying":
            instead = "the run is retried after the job's backoff instead"
        else:
            instead = "no retry follows this attempt"
        self.add_log("WARNING", log.name,
                     f"the RetryAfterError had no usable delay ({reason}); {instead}", None)

    def cancelled(self) -> None:
        self._finish(Outcome("cancelled", error=dict(outcomes.CANCELLED_WHILE_RUNNING)))

    def _finish(self, outcome: Outcome, now: float | None = None) -> None:
        if self.abandoned:
            return
        now = self.clock.now() if now is None else now
        logs = self.take_logs()
        try:
            done = self._through_outages(
                lambda: self.store.finish_attempt(self.lease, outcome, logs, now))
        except PayloadTooLargeError as exc:
            if outcome.result is None:
                raise
            # A server whose request body limit the result's JSON does not fit (413):
            # nothing was written. The attempt fails with no retry (each would send
            # the same result), its log records with it.
            outcome = self._failure(now=now, exc=StepResultTooLargeError(
                f"{_not_sent('job result', outcome.result, exc)}. The job's handler"
                " returned, but its result was not stored"))
            done = self._through_outages(
                lambda: self.store.finish_attempt(self.lease, outcome, logs, now))
        if not done:
            if self.abandoned_for == "handed back":
                log.warning("run %s: the handler ended as the worker handed the run back;"
                            " the attempt's ending was not recorded, and the run runs"
                            " again from its completed steps", self.run.id)
            else:
                log.warning("run %s: lease lost before the attempt could be recorded (or a"
                            " try whose answer was lost recorded it)", self.run.id)
            return
        if outcome.retry_at is not None:
            self.service.notifier.due(outcome.retry_at)
        if outcome.status in ("retrying", "failed"):
            say_failed(self.job.name, self.run.id, self.attempts_used, self.run.max_attempts,
                       outcome, done, now)


    def conclude(self, error: BaseException | None, value: Any = None) -> None:
        """Record how the handler ended: returned ``value`` or raised ``error``."""
        self.ended = True
        error = _signal(error)
        if self.suspended:
            return  # parked already, whatever the handler did after (caught Suspend?)
        if error is None:
            self.complete(value)
        elif isinstance(error, Suspend):
            return
        elif isinstance(error, LeaseLost):
            if self.abandoned_for == "handed back":
                log.info("run %s: handed back as the worker stopped; its handler stopped"
                         " at a step", self.run.id)
            elif self.abandoned_for == "timed out":
                log.info("run %s: the handler of the attempt that timed out stopped at a"
                         " step", self.run.id)
            else:
                log.warning("run %s: this worker lost the run's lease; abandoning",
                            self.run.id)
        elif isinstance(error, CancelSignal):
            self.cancelled()
        else:
            self.fail(error)


def first_line(exc: BaseException) -> str:
    """The first line of what ``exc`` says (a driver's error runs over several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def outage_of(exc: BaseException) -> str | None:
    """What ``exc`` says is unavailable, when it is worth trying again."""
    if is_schema_missing(exc):
        return SCHEMA_MISSING
    if is_database_unavailable(exc):
        return "the database is unavailable"
    # Imported here: a worker on the database never loads the HTTP client.
    from ..remote import is_server_unavailable

    if is_server_unavailable(exc):  # a remote worker's
        return "the server is unavailable or its answer was lost"
    return None


def warn_of(logger: logging.Logger, exc: BaseException, message: str, *args: object) -> None:
    """A warning that something could not be done because of ``exc``: with its
    traceback, unless the database or the server is unavailable, said in the line."""
    outage = outage_of(exc)
    if outage is None:
        logger.warning(message, *args, exc_info=exc)
    else:
        logger.warning(message + ": %s (%s: %s)", *args, outage, type(exc).__name__,
                       first_line(exc))


class Retrying:
    """Says on ``logger`` that a loop failed and is tried again: with its
    traceback, unless the database or the server is unavailable (a restart, a
    dropped connection, the tables gone), which is said in one line, at most
    every ``every`` seconds for each loop while it lasts."""

    def __init__(self, logger: logging.Logger, every: float) -> None:
        self.logger = logger
        self.every = every
        self._said: dict[str, float] = {}  # when each loop last said it (monotonic)

    def say(self, what: str, exc: Exception) -> None:
        """``what`` failed (e.g. ``worker wkr_1: claim``) with ``exc``."""
        outage = outage_of(exc)
        if outage is None:
            self.logger.error("%s failed; retrying", what, exc_info=exc)
            return
        now = time.monotonic()
        if now - self._said.get(what, float("-inf")) >= self.every:
            self._said[what] = now
            self.logger.warning("%s failed, %s (%s: %s); retrying", what, outage,
                                type(exc).__name__, first_line(exc))


def say_failed(job: str, run_id: str, attempts_used: int, max_attempts: int,
               outcome: Outcome, ended: str, now: float) -> None:
    """Log a recorded failed attempt on ``stackshift.attempts``: retried after how
    long (WARNING), failed for good (ERROR), or ending the run cancelled as asked
    while it ran (INFO: ``ended``, the run's status after it, says which), its
    attempt counted in the run's budget, its error on one line of at most
    ``SAID_OF_ERROR`` characters."""
    error = outcome.error or {}
    said = " ".join(f"{error.get('type', 'Error')}: {error.get('message', '')}".split())
    if len(said) > SAID_OF_ERROR:
        said = said[:SAID_OF_ERROR - 1] + "…"
    which = f"attempt {attempts_used} of {max_attempts}"
    token = CURRENT.set(None)  # the engine's own record, not one of a run's logs
    try:
        if ended == "cancelled":
            attempts_log.info("%s %s: %s failed: %s; the run is cancelled, as asked while"
                              " it ran", job, run_id, which, said)
        elif outcome.retry_at is not None:
            attempts_log.warning("%s %s: %s failed: %s; retrying in %s", job, run_id, which,
                                 said, span(outcome.retry_at - now))
        else:
            attempts_log.error("%s %s: failed for good on %s: %s", job, run_id, which, said)
    finally:
        CURRENT.reset(token)


def _awaited(name: str, correlation_key: str | None) -> str:
    """A wait's event, as a non-determinism error names it."""
    if correlation_key is None:
        return f"event {name!r} without a correlation key"
    return f"event {name!r} with correlation key {correlation_key!r}"


def _signal(error: BaseException | None) -> BaseException | None:
    """What a group of errors (calls made in an ``asyncio.TaskGroup``) ends the
    invocation as when it holds a signal: a :class:`Suspend` (the run is parked
    already) or a :class:`LeaseLost` (nothing may be written) whatever else it
    holds, a :class:`CancelSignal` when it holds nothing else (else it is an
    attempt that failed after a cancel was requested, which keeps its errors).
    Any other error as it is."""
    if not isinstance(error, BaseExceptionGroup):
        return error
    held = list(outcomes.leaves(error))
    for signal in (Suspend, LeaseLost):
        found = next((e for e in held if isinstance(e, signal)), None)
        if found is not None:
            return found
    if all(isinstance(e, CancelSignal) for e in held):
        return held[0]
    return error


def _short_repr(value: object, limit: int = 100) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit] + "..."


def _check_keywords(name: str, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse, before ``fn`` runs, a keyword that it does not take, explained as
    the client's calls explain theirs (see :mod:`stackshift.keywords`)."""
    try:
        accepted = accepted_keywords(fn)
    except (TypeError, ValueError):  # no signature to read (some builtins): the call tells
        return
    if accepted is not None:
        error = unknown_keyword(f"step {name!r}: {qualified_name(fn)}()", kwargs, accepted)
        if error is not None:
            raise error


#: Said of a refused ctx.step or ctx.state call.
_NOT_RETRIED = ("unless the handler catches this error, the run fails now without retrying,"
                " as every attempt would make the same call")

#: Said of a step result that cannot be stored.
def _not_sent(what: str, text: str, refusal: PayloadTooLargeError) -> str:
    """Why a result within the limits was not stored: the server refused the
    request carrying it for its size (``refusal``, a 413)."""
    return (f"{what} is {len(text.encode())} bytes as JSON, within the limit, but the server"
            f" refused the request carrying it ({refusal}): raise the server's"
            " --max-body-bytes (its default takes every result within the limits) or"
            " return less")


_ALREADY_RAN = ("The step's function already ran, but its result was not stored; unless the"
                " handler catches this error, the run fails now without retrying, as another"
                " attempt would run the function again.")


def _not_a_result(job: Job, value: Any, exc: Exception) -> str:
    """Why ``value`` cannot be a run's result. An awaitable from a handler that was
    awaited is a call inside it left without ``await``; from one that was not, a
    handler that the worker took for a plain function: say which (and close a
    coroutine, which would otherwise warn that it was never awaited)."""
    if not inspect.isawaitable(value):
        return str(exc)
    if inspect.iscoroutine(value):
        value.close()
    returned = f"the handler of job {job.name!r} returned a {type(value).__name__}"
    if job.is_async:
        what = getattr(value, "__qualname__", type(value).__name__)
        return (f"{returned} ({what}) instead of a result: the call that made it was not "
                f"awaited (return await {what}(...))")
    return (f"{returned} instead of a result: it was called as a plain function. "
            "Register an async def, an object whose __call__ is an async def, or a "
            "decorator that keeps __wrapped__ (functools.wraps)")


class _Refusing:
    """:meth:`Invocation.refusing`: marks a ``ValueError`` or ``TypeError`` raised
    inside as a refused call and lets it out."""

    __slots__ = ("_api", "_invocation")

    def __init__(self, invocation: Invocation, api: str) -> None:
        self._invocation = invocation
        self._api = api

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> Literal[False]:
        if isinstance(exc, (ValueError, TypeError)):
            self._invocation.refuse(exc, self._api)
        return False


#: Fields a payload's mismatch names at most; the run's traceback has them all.
MISMATCHES_SHOWN = 10


def _mismatch(exc: Exception) -> str:
    """What is wrong with a payload, one ``field: message`` per field on one line
    (``items.0.sku: Field required; total: Input should be a valid number``),
    for pydantic's errors; else the exception's own text."""
    if not isinstance(exc, pydantic.ValidationError):
        return str(exc)
    said = [f"{'.'.join(str(part) for part in error['loc']) or 'payload'}: {error['msg']}"
            for error in exc.errors(include_url=False)]
    more = len(said) - MISMATCHES_SHOWN
    return "; ".join(said[:MISMATCHES_SHOWN]) + (f" (and {more} more)" if more > 0 else "")
