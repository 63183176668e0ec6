"""Running one claimed run's handler, sync or async, and recording how it ended."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
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


def end_async_handlers(loop: asyncio.AbstractEventLoop, worker_id: str, wait: float) -> None:
    """Cancel the async handlers still running on ``loop`` when the worker stops
    (their runs were handed back, or their attempts timed out), and let them end
    within ``wait`` seconds: a loop stopped under them would leave them to end at
    exit, with tracebacks. A loop held up by a blocking call is not waited for long."""

    async def cancel_all() -> list[asyncio.Task[Any]]:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=wait)
        return [task for task in tasks if not task.done()]

    try:
        left = asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(wait + 1)
    except Exception:
        log.warning("worker %s: async handlers still running as it stops (a blocking"
                    " call holds up the event loop?)", worker_id)
        return
    if not left:
        return
    # Handlers that caught the cancellation and go on (their attempts were failed
    # at their timeout, or their runs handed back): said once here, rather than
    # as "Task was destroyed but it is pending!" when each is collected.
    log.warning("worker %s: %d async handler(s) did not stop when cancelled; left"
                " behind as the worker stops", worker_id, len(left))
    behind = set(left)

    def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("task") not in behind:
            loop.default_exception_handler(context)

    loop.set_exception_handler(quiet)


def run_apart(coroutine: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``coroutine()`` to its end on an event loop of its own: in this thread, or
    in a thread of its own when this one runs an event loop already."""
    # Found out first, and run outside the except block: an error the handler
    # raises would otherwise carry "no running event loop" as its context.
    try:
        asyncio.get_running_loop()
        looping = True
    except RuntimeError:
        looping = False
    if not looping:
        asyncio.run(coroutine())
        return
    done = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stackshift-apart")
    try:
        done.submit(lambda: asyncio.run(coroutine())).result()
    finally:
        done.shutdown()
