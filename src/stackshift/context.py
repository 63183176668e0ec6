"""The handler's ``ctx``: payload, run info, durable steps, state and a logger."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from types import CodeType
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

from .awaits import noted
from .checks import ON_TIMEOUT, check_key
from .durations import parse_duration, parse_instant
from .errors import HandlerSignal, ValidationError
from .jobs import check_name
from .keywords import NOT_GIVEN, binds, public_calls
from .models import Event
from .runlogs import RUN_LOGGER
from .settings import LONGEST_KEY
from .state import AsyncState, HandlerAsyncState, State

if TYPE_CHECKING:
    from .worker.invocation import Invocation

#: The payload's type: ``JobContext[Model]`` gives ``ctx.payload`` as a ``Model``.
PayloadT = TypeVar("PayloadT")
#: ``ctx.step`` and ``ctx.state``: the plain or the awaitable flavour.
StepsT = TypeVar("StepsT", bound="_StepsBase")
StateT = TypeVar("StateT", State, AsyncState)
#: A step function's parameters and result, for ``ctx.step.run``.
P = ParamSpec("P")
T = TypeVar("T")

#: ``ctx.log``: its records are captured into the run's logs (see runlogs).
_RUN_LOG = logging.getLogger(RUN_LOGGER)


@dataclass(frozen=True)
class RunInfo:
    id: str
    job: str
    queue: str
    attempt: int
    max_attempts: int
    created_at: datetime
    idempotency_key: str | None


def _check_wait(event_name: str, correlation_key: str | None, timeout: Any,
                on_timeout: str) -> float:
    check_name(event_name, "event name")
    if correlation_key is not None:
        check_key(correlation_key, "correlation_key", LONGEST_KEY)
    if on_timeout not in ON_TIMEOUT:
        raise ValidationError(f"on_timeout must be one of {ON_TIMEOUT}, got {on_timeout!r}")
    if timeout is None:
        raise ValidationError("timeout: None is not a duration; every wait has a timeout"
                              " (at most 100 years), e.g. '30d'")
    seconds = parse_duration(timeout, name="timeout")
    if seconds <= 0:
        raise ValidationError("timeout must be more than 0")
    return seconds


def _run_sync(value: Any) -> Any:
    """A sync handler calling an async step function: run it to completion here, or,
    when this thread runs an event loop already (``run_until_idle`` in an async
    test), on a loop of its own in another thread, in this thread's context."""
    if not inspect.isawaitable(value):
        return value

    async def _await() -> Any:
        return await value

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await())
    with ThreadPoolExecutor(1, thread_name_prefix="stackshift-step") as thread:
        return thread.submit(contextvars.copy_context().run, asyncio.run, _await()).result()


def _capture(fn: Callable[..., Any], args: Any, kwargs: Any) -> tuple[Any, BaseException | None]:
    """Call ``fn`` in a worker thread, handing back its exception untouched.

    Through ``asyncio.to_thread`` a ``TimeoutError`` would come back as a new
    exception without the step function's traceback.
    """
    try:
        return fn(*args, **kwargs), None
    except BaseException as exc:  # SystemExit too: it is the step's error
        return None, exc


def _step_error(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a step function, is the step's error.

    Besides exceptions, a ``SystemExit``, ``KeyboardInterrupt`` or a
    ``CancelledError`` raised by the function's own code are; StackShift's
    signals and the cancellation of the handler's task (attempt timeout) are not.
    """
    if isinstance(exc, HandlerSignal):
        return False
    if isinstance(exc, asyncio.CancelledError):
        task = _current_task()
        return task is None or not task.cancelling()
    return True


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def _refused(steps: _StepsBase, exc: TypeError) -> None:
    """Arguments a ``ctx.step`` method's signature does not take (an unknown
    keyword, a missing or an extra positional argument) are a refused call."""
    steps._inv.refuse(exc)


#: The code that calls a step's function (filled in below the classes): where
#: Python raises the ``TypeError`` of arguments the function does not take.
_CALLERS: frozenset[CodeType] = frozenset()


def _not_taken(exc: BaseException, name: str, fn: Callable[..., Any], args: Any,
               kwargs: Any) -> TypeError | None:
    """The refusal of a step function's arguments, if ``exc`` (raised by calling
    ``fn``) is Python's error for arguments that ``fn``'s signature does not take
    (a missing or an extra positional argument): raised at the call itself, so
    that none of ``fn``'s code ran. ``None`` for any other error, such as a
    ``TypeError`` raised by the function's own code."""
    if not isinstance(exc, TypeError) or exc.__traceback__ is None:
        return None
    innermost = exc.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    if innermost.tb_frame.f_code not in _CALLERS:
        return None
    try:
        if binds(fn, args, kwargs):
            return None  # the arguments bind: a builtin function raised it itself
    except ValueError:  # no signature to read (some builtins): its own error
        return None
    return TypeError(f"step {name!r}: {exc}")


def _refuse_if_not_taken(inv: Invocation, exc: BaseException, name: str,
                         fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
    """Raise the refusal of the step's arguments (see :func:`_not_taken`), noted
    with the invocation, if ``exc`` is Python's error for them."""
    refused = _not_taken(exc, name, fn, args, kwargs)
    if refused is not None:
        inv.refuse(refused)
        raise refused from None


class _StepsBase:
    def __init__(self, invocation: Invocation) -> None:
        self._inv = invocation

    # The checks of the pauses' arguments, shared by both flavours: what they raise
    # is a refused call (Invocation.refusing).

    def _sleep_seconds(self, duration: Any) -> float:
        with self._inv.refusing():
            return parse_duration(duration)

    def _moment(self, when: datetime | str) -> float:
        with self._inv.refusing():
            return parse_instant(when, name="when")

    def _wait_seconds(self, event_name: str, correlation_key: str | None, timeout: Any,
                      on_timeout: str) -> float:
        with self._inv.refusing():
            return _check_wait(event_name, correlation_key, timeout, on_timeout)

    def idempotency_key(self, suffix: str | None = None) -> str:
        """A key for an external API's idempotency, the same on every attempt.

        Made inside the function of ``ctx.step.run``, it is that step's key: it
        names the step and its occurrence (a run's second step ``"charge"`` gets
        another key than its first). Made in the handler outside any step, it
        names the handler's place among its steps: it counts the steps (runs,
        sleeps and waits) taken so far, so a key made just before a step, to pass
        to its function, is the same on every attempt, but it is not the key
        that step's function would make. Keys made at one place (inside one
        step, or with no step taken between them) are the same: pass ``suffix``
        to derive several from it.
        """
        from .runlogs import CURRENT_STEP

        step = CURRENT_STEP.get() or f"after:{sum(self._inv._occurrences.values())}"
        raw = f"{self._inv.run.id}:{step}" + (f":{suffix}" if suffix else "")
        return f"{self._inv.run.id}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


@public_calls("ctx.step", refused=_refused)
class Steps(_StepsBase):
    """``ctx.step`` for plain (sync) handlers.

    Arguments the engine refuses (a bad name or duration, arguments that a
    method's or a step's function's signature does not take) raise
    ``ValidationError`` or ``TypeError`` into the handler; if it lets one out,
    the run fails without retrying (see :meth:`Invocation.refuse`).
    """

    # Its own member, for public_calls to wrap as it wraps the others.
    idempotency_key = _StepsBase.idempotency_key

    @overload
    def run(self, name: str, fn: Callable[P, Awaitable[T]], /,
            *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    def run(self, name: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...

    def run(self, name: str = NOT_GIVEN, fn: Callable[P, Any] = NOT_GIVEN, /,
            *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run ``fn(*args, **kwargs)`` once per run and return its (stored) JSON result.

        A later invocation returns the stored result without calling ``fn``. An
        exception is recorded on the step and raised here. ``name`` and ``fn`` are
        positional, so ``fn`` may take keyword arguments of any name. An async
        ``fn`` is run to completion: the result is what it returns. Arguments
        that ``fn`` does not take are a refused call: no step is recorded.
        """
        inv = self._inv
        plan = inv.plan_run(name, fn, inv.step_key(name, fn, kwargs))
        if plan.replayed:
            return plan.result
        with inv.in_step(plan.key):
            try:
                value = _run_sync(fn(*args, **kwargs))
            except BaseException as exc:
                _refuse_if_not_taken(inv, exc, name, fn, args, kwargs)
                if _step_error(exc):
                    inv.record_failed(plan, exc)
                raise
        return inv.record_completed(plan, value)

    def sleep(self, name: str, duration: Any) -> None:
        """Pause the run for ``duration``; no worker slot is held meanwhile."""
        seconds = self._sleep_seconds(duration)
        self._inv.sleep_until(name, lambda now: now + seconds)

    def sleep_until(self, name: str, when: datetime | str) -> None:
        moment = self._moment(when)
        self._inv.sleep_until(name, lambda now: moment)

    @overload
    def wait_for_event(self, event_name: str, *, correlation_key: str | None = None,
                       timeout: Any = "7d",
                       on_timeout: Literal["fail", "cancel"] = "fail") -> Event: ...

    @overload
    def wait_for_event(self, event_name: str, *, correlation_key: str | None = None,
                       timeout: Any = "7d", on_timeout: str) -> Event | None: ...

    def wait_for_event(
        self,
        event_name: str,
        *,
        correlation_key: str | None = None,
        timeout: Any = "7d",
        on_timeout: str = "fail",
    ) -> Event | None:
        """Pause until an event with this name and key arrives (see the events docs).

        None only when the wait timed out with ``on_timeout="continue"``: with
        the default ``"fail"`` a timeout fails the run (``"cancel"`` cancels it),
        and type checkers see an :class:`Event`."""
        seconds = self._wait_seconds(event_name, correlation_key, timeout, on_timeout)
        return self._inv.wait_for_event(event_name, correlation_key, seconds, on_timeout)


@noted("ctx.step")
@public_calls("ctx.step", refused=_refused)
class AsyncSteps(_StepsBase):
    """``ctx.step`` for ``async def`` handlers: the same methods, awaitable.

    Store writes run in a thread so that other handlers on the loop keep going.
    """

    idempotency_key = _StepsBase.idempotency_key

    @overload
    async def run(self, name: str, fn: Callable[P, Awaitable[T]], /,
                  *args: P.args, **kwargs: P.kwargs) -> T: ...

    @overload
    async def run(self, name: str, fn: Callable[P, T], /,
                  *args: P.args, **kwargs: P.kwargs) -> T: ...

    async def run(self, name: str = NOT_GIVEN, fn: Callable[P, Any] = NOT_GIVEN, /,
                  *args: P.args, **kwargs: P.kwargs) -> Any:
        """The result of ``fn`` awaited, whether ``fn`` is sync (run in a thread) or async."""
        inv = self._inv
        key = inv.step_key(name, fn, kwargs)  # before any await: in the order of the calls
        # Counted as running from here, before any await: a sleep or a wait gathered
        # with it sees it (StepsRunning), even while it asks the store first.
        with inv.steps_running.one():
            if inv.stale():  # the boundary would ask the store: not on the loop
                await asyncio.to_thread(inv.ask_store)
            plan = inv.plan_run(name, fn, key)
            if plan.replayed:
                return plan.result
            with inv.in_step(plan.key):
                try:
                    if inspect.iscoroutinefunction(fn):
                        value = await fn(*args, **kwargs)
                    else:
                        value, error = await asyncio.to_thread(_capture, fn, args, kwargs)
                        if error is not None:
                            raise error
                        if inspect.isawaitable(value):
                            value = await value
                except BaseException as exc:
                    _refuse_if_not_taken(inv, exc, name, fn, args, kwargs)
                    if _step_error(exc):
                        await asyncio.to_thread(inv.record_failed, plan, exc)
                    raise
            return await asyncio.to_thread(inv.record_completed, plan, value)

    # A sleep or a wait may park the run: the steps running beside it (a gather)
    # end first (StepsRunning), so that none is left running, or called again
    # by the invocation that resumes the run.

    async def sleep(self, name: str, duration: Any) -> None:
        seconds = self._sleep_seconds(duration)
        key = self._inv.pause_key(name)
        await self._inv.steps_running.settled(let_start=True)
        await asyncio.to_thread(self._inv.sleep_until, name, lambda now: now + seconds, key)

    async def sleep_until(self, name: str, when: datetime | str) -> None:
        moment = self._moment(when)
        key = self._inv.pause_key(name)
        await self._inv.steps_running.settled(let_start=True)
        await asyncio.to_thread(self._inv.sleep_until, name, lambda now: moment, key)

    @overload
    async def wait_for_event(self, event_name: str, *, correlation_key: str | None = None,
                             timeout: Any = "7d",
                             on_timeout: Literal["fail", "cancel"] = "fail") -> Event: ...

    @overload
    async def wait_for_event(self, event_name: str, *, correlation_key: str | None = None,
                             timeout: Any = "7d", on_timeout: str) -> Event | None: ...

    async def wait_for_event(
        self,
        event_name: str,
        *,
        correlation_key: str | None = None,
        timeout: Any = "7d",
        on_timeout: str = "fail",
    ) -> Event | None:
        seconds = self._wait_seconds(event_name, correlation_key, timeout, on_timeout)
        key = self._inv.next_key(event_name)
        await self._inv.steps_running.settled(let_start=True)
        return await asyncio.to_thread(
            self._inv.wait_for_event, event_name, correlation_key, seconds, on_timeout, key
        )


_CALLERS = frozenset({_capture.__code__, inspect.unwrap(vars(Steps)["run"]).__code__,
                      inspect.unwrap(vars(AsyncSteps)["run"]).__code__})


class _ContextBase(Generic[PayloadT, StepsT, StateT]):
    """What every handler receives; :class:`JobContext` and :class:`AsyncJobContext`
    name the flavour of ``step`` and ``state`` for the type checker."""

    payload: PayloadT
    run: RunInfo
    step: StepsT
    state: StateT
    log: logging.Logger

    def __init__(self, invocation: Invocation, payload: PayloadT, step: StepsT,
                 state: StateT) -> None:
        run = invocation.run
        self.payload = payload
        self.run = RunInfo(
            id=run.id,
            job=run.job,
            queue=run.queue,
            attempt=invocation.lease.attempt,
            max_attempts=run.max_attempts,
            created_at=run.created_at,
            idempotency_key=run.idempotency_key,
        )
        self.step = step
        self.state = state
        self.log = _RUN_LOG


class JobContext(_ContextBase[PayloadT, Steps, State]):
    """What a plain (sync) handler receives. Annotate ``ctx: JobContext[Model]``
    for a typed payload."""

    def __init__(self, invocation: Invocation, payload: PayloadT, state: State) -> None:
        super().__init__(invocation, payload, Steps(invocation), state)


class AsyncJobContext(_ContextBase[PayloadT, AsyncSteps, AsyncState]):
    """What an ``async def`` handler receives: ``ctx.step`` and ``ctx.state`` are
    awaitable. Annotate ``ctx: AsyncJobContext[Model]`` for a typed payload."""

    def __init__(self, invocation: Invocation, payload: PayloadT, state: AsyncState) -> None:
        super().__init__(invocation, payload, AsyncSteps(invocation), HandlerAsyncState(state))
