"""How an attempt ends: the pure decision from what the handler did."""

from __future__ import annotations

import traceback as tb

from ..errors import NonDeterminismError, NonRetriableError, RetryAfterError
from ..store.base import Outcome
from .retries import Backoff

#: The error of a run stopped by a cancel requested while it ran.
CANCELLED_WHILE_RUNNING: dict[str, str | None] = {
    "type": "Cancelled", "message": "cancelled while running", "traceback": None}


def error_dict(exc: BaseException, *, with_traceback: bool = True) -> dict[str, str | None]:
    """The stored form of an exception: type, message and formatted traceback."""
    text = "".join(tb.format_exception(exc)) if with_traceback else None
    return {"type": type(exc).__name__, "message": str(exc), "traceback": text}


def failure(
    exc: BaseException,
    *,
    retriable: bool = True,
    attempts_used: int,
    max_attempts: int,
    backoff: Backoff,
    now: float,
) -> Outcome:
    """Retry with backoff while attempts remain, unless the error says not to.

    ``NonRetriableError`` and ``NonDeterminismError`` fail the run at once, and
    so does any error when ``retriable`` is false (a ``ctx.step`` call the engine
    refused); ``RetryAfterError`` sets the delay itself.
    """
    error = error_dict(exc)
    if not retriable or isinstance(exc, NonRetriableError | NonDeterminismError):
        return Outcome("failed", error=error)
    if attempts_used >= max_attempts:
        return Outcome("failed", error=error)
    delay = exc.delay if isinstance(exc, RetryAfterError) else backoff.delay(attempts_used)
    return Outcome("retrying", error=error, retry_at=now + delay)


def lost_worker(*, attempts_used: int, max_attempts: int, now: float,
                message: str = "the worker running this attempt stopped renewing its lease",
                ) -> Outcome:
    """The outcome recorded for an attempt whose worker stopped renewing its lease,
    or whose worker's process was seen to end (``message`` says which).

    The attempt counts against ``max_attempts`` like any other, but the next one
    is due at once, without the job's backoff: the worker vanished (crash,
    kill -9, lost network), the job did not fail, and the run has already
    waited for its lease (or its worker is known to be gone). The run still passes through
    ``retrying`` (``next_attempt_at`` = now), so its timeline shows the attempt
    failed as ``WorkerLost`` before the next one started.
    """
    error = {"type": "WorkerLost", "message": message, "traceback": None}
    if attempts_used >= max_attempts:
        return Outcome("failed", error=error)
    return Outcome("retrying", error=error, retry_at=now)
