"""Running one claimed run's handler, sync or async, and recording how it ended."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Awaitable
from typing import Any, TypeVar

from ..context import AsyncJobContext, JobContext
from ..errors import AttemptTimeoutError
from ..runlogs import CURRENT
from ..state import AsyncState, State
from .invocation import Invocation

T = TypeVar("T")

log = logging.getLogger("stackshift.worker")

#: The thread a Ctrl-C interrupts.
MAIN = threading.main_thread()


def execute_sync(invocation: Invocation, state: State) -> None:
    """Call a plain handler in this thread and record the outcome."""
    token = CURRENT.set(invocation)
    try:
        error: BaseException | None = None
        value: Any = None
        try:
            ctx: JobContext[Any] = JobContext(invocation, invocation.payload(), state)
            value = invocation.job.handler(ctx)
        except BaseException as exc:  # a SystemExit from user code fails the attempt too
            error = exc
        invocation.returned(error)
        invocation.conclude(error, value)
        if isinstance(error, KeyboardInterrupt) and threading.current_thread() is MAIN:
            raise error  # recorded; a Ctrl-C (run_until_idle) still stops the caller
    except Exception as exc:
        invocation.unrecorded = exc
        log.exception("run %s: could not record the attempt's outcome", invocation.run.id)
    finally:
        CURRENT.reset(token)


async def _with_its_steps(invocation: Invocation, handler: Awaitable[T]) -> T:
    """What the handler returns or raises, once the steps it started have ended
    too: one of several it gathered may fail while the others still run (see
    :class:`~stackshift.awaits.StepsRunning`). Within the job's timeout."""
    try:
        return await handler
    finally:
        await invocation.steps_running.settled()


async def execute_async(invocation: Invocation, state: AsyncState) -> None:
    """Await an ``async def`` handler on this loop and record the outcome.

    A job ``timeout`` cancels the handler and fails the attempt, also when the
    handler catches the cancellation and returns.
    """
    token: contextvars.Token[Invocation | None] | None = CURRENT.set(invocation)
    try:
        error: BaseException | None = None
        value: Any = None
        try:
            ctx: AsyncJobContext[Any] = AsyncJobContext(invocation, invocation.payload(), state)
            coro = _with_its_steps(invocation, invocation.job.handler(ctx))
            timeout = invocation.job.timeout
            if timeout is None:
                value = await coro
            else:
                limit = asyncio.timeout(timeout)
                try:
                    async with limit:
                        value = await coro
                except TimeoutError:
                    if not limit.expired():
                        raise  # the handler's own: its error
                if limit.expired():  # also when the handler caught the cancellation
                    value = None
                    error = AttemptTimeoutError(f"attempt ran longer than {timeout:g}s")
        except GeneratorExit:
            # Closed, never to resume: the task of a handler that would not stop
            # when cancelled, collected after its worker stopped (its attempt was
            # failed by the heartbeat). Nothing is left to record, nor a context
            # to restore (the collector's is another).
            token = None
            raise
        except BaseException as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # this task is being cancelled: not the handler's error
            error = exc  # a CancelledError or SystemExit of the handler's own code too
        error = invocation.issued.ending(error)
        invocation.returned(error)
        await asyncio.to_thread(invocation.conclude, error, value)
    except Exception as exc:
        invocation.unrecorded = exc
        log.exception("run %s: could not record the attempt's outcome", invocation.run.id)
    finally:
        if token is not None:
            CURRENT.reset(token)
