"""Calls of an async handler's ``ctx.step`` and ``ctx.state`` that are never awaited.

In an ``async def`` handler, ``ctx.step.run("charge", charge)`` without ``await``
makes a coroutine and nothing else: the step does not run, and Python only says
so on stderr when the coroutine is collected. Each such call is noted with the
invocation it was made in; when the handler ends, a call whose coroutine never
started fails the run (:class:`~stackshift.errors.StepNotAwaitedError`), naming
the call and the line that made it, unless the handler raised an error of its
own, which may have come before the ``await`` (see :meth:`Issued.ending`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import sys
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import StepNotAwaitedError
from .runlogs import CURRENT

T = TypeVar("T")

#: Notes kept before those of started calls are dropped.
_PRUNE_AT = 256


@dataclass(frozen=True, slots=True)
class Call:
    """A noted call; the text is made only for a call that is reported."""

    coroutine: Coroutine[Any, Any, Any]
    #: the method, e.g. ``ctx.step.run``
    api: str
    #: its first argument when a string (a step's name, a key), else None
    first: str | None
    filename: str
    line: int

    def __str__(self) -> str:  # ctx.step.run('charge') at app.py:12
        first = "" if self.first is None else repr(self.first)
        return f"{self.api}({first}) at {self.filename}:{self.line}"


class Issued:
    """The awaitable calls made during one invocation (see the module's text)."""

    __slots__ = ("_calls", "_prune_at")

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._prune_at = _PRUNE_AT

    def add(self, call: Call) -> None:
        if len(self._calls) >= self._prune_at:
            self._calls = [c for c in self._calls if _unstarted(c.coroutine)]
            # Twice what is still unstarted: 10,000 calls made before one gather
            # are looked at a few times each, not 10,000 times.
            self._prune_at = max(_PRUNE_AT, 2 * len(self._calls))
        self._calls.append(call)

    def ending(self, error: BaseException | None) -> BaseException | None:
        """What the handler ended with (``error``: what it raised, if anything),
        given the calls it made that were never awaited, whose coroutines are
        closed here (Python would otherwise warn of each):

        - it returned, or raised the ``TypeError`` or ``AttributeError`` of
          using a coroutine as a value (``'coroutine' object is not
          subscriptable``): :class:`StepNotAwaitedError`, that error its cause;
        - it raised another error, which may have come before the ``await`` the
          handler would have reached: that error, with a note naming the calls;
        - it was stopped by a signal (a wait or sleep that parks the run, a
          cancel), or a ``BaseException``: that, as it is.
        """
        never = [c for c in self._calls if _unstarted(c.coroutine)]
        self._calls = []
        if not never:
            return error
        # One handed to asyncio.create_task and left to run after the handler:
        # its task is cancelled before it starts (closing the coroutine under
        # it would make the task fail when it does).
        tasks = {id(task.get_coro()): task for task in asyncio.all_tasks()}
        for call in never:
            task = tasks.get(id(call.coroutine))
            if task is not None:
                task.cancel()
            else:
                call.coroutine.close()
        if error is not None and not isinstance(error, Exception):
            return error  # a wait or sleep that parks the run, a cancel: nothing to judge
        listed = "; ".join(map(str, never[:5]))
        if len(never) > 5:
            listed += f" and {len(never) - 5} more"
        what = "call was" if len(never) == 1 else "calls were"
        if error is not None and not _of_a_coroutine(error):
            error.add_note(f"StackShift: {len(never)} {what} not awaited when the handler "
                           f"raised this: {listed}")
            return error
        ended = StepNotAwaitedError(
            f"{len(never)} {what} not awaited before the handler ended, so what "
            f"{'it does' if len(never) == 1 else 'they do'} did not happen: {listed}. "
            "In an async handler, await every ctx.step and ctx.state call (or hand it to "
            "asyncio.gather or a TaskGroup); the run fails now without retrying, as every "
            "attempt would do the same")
        ended.__cause__ = error
        return ended


class StepsRunning:
    """The steps of an async handler's invocation running now.

    A handler that runs steps side by side (``asyncio.gather``, a TaskGroup) may
    end, when one of them fails, or park the run (a sleep or a wait among them)
    while others still run. Their functions have started, so they are let end and
    their checkpoints written first (:meth:`settled`): the attempt's ending, or the
    parking, then comes after them, and a later invocation replays their results
    instead of calling the functions a second time alongside the first.
    """

    __slots__ = ("_count", "_none")

    def __init__(self) -> None:
        self._count = 0
        self._none: asyncio.Event | None = None  # made on the handler's loop

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        """Around a step's function and its checkpoint."""
        if self._none is None:
            self._none = asyncio.Event()
        self._count += 1
        self._none.clear()
        try:
            yield
        finally:
            self._count -= 1
            if self._count == 0:
                self._none.set()

    async def settled(self, *, let_start: bool = False) -> None:
        """Return once no step of the invocation is running (at once if none is).

        A step counts from its call's first line, before any await of its own.
        ``let_start`` (a sleep or a wait about to park the run): the tasks ready
        to run start first, so that of the calls gathered with it
        (``gather(sleep, step)``: the step's task not started yet) none is missed.
        """
        if let_start:
            await asyncio.sleep(0)
        if self._count and self._none is not None:
            await self._none.wait()


def _of_a_coroutine(error: BaseException) -> bool:
    """Whether ``error`` is what using a coroutine as a value raises."""
    return isinstance(error, TypeError | AttributeError) and "coroutine" in str(error)


def _unstarted(coroutine: Coroutine[Any, Any, Any]) -> bool:
    return inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED


def noted(api: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: each public ``async def`` of the class, its own or
    inherited (``api`` is how a handler reaches it, e.g. ``ctx.step``), notes the
    coroutine it returns with the current invocation, if any. Apply it above the
    decorators that wrap the methods: it wraps what they made. On Python 3.11,
    ``inspect.iscoroutinefunction`` then says False of the methods, which return
    coroutines all the same."""
    def decorate(cls: type[T]) -> type[T]:
        for name in dir(cls):
            member = inspect.getattr_static(cls, name)
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                setattr(cls, name, _noting(member, f"{api}.{name}"))
        return cls

    return decorate


def _noting(method: Callable[..., Coroutine[Any, Any, Any]], api: str
            ) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Coroutine[Any, Any, Any]:
        coroutine = method(*args, **kwargs)
        invocation = CURRENT.get()
        if invocation is not None:
            caller = sys._getframe(1)
            first = args[1] if len(args) > 1 and isinstance(args[1], str) else None
            invocation.issued.add(Call(coroutine, api, first, caller.f_code.co_filename,
                                       caller.f_lineno))
        return coroutine

    # Still reported as an async def where Python can be told (3.12 and later).
    mark: Callable[[Any], Any] | None = getattr(inspect, "markcoroutinefunction", None)
    return call if mark is None else mark(call)
