"""How an attempt ends: the pure decision from what the handler did."""

from __future__ import annotations

from collections.abc import Iterator

from ..durations import parse_duration
from ..errors import NonDeterminismError, NonRetriableError, RetryAfterError
from ..runlogs import shortened
from ..serialization import utf8
from ..store.base import Outcome
from ..tracebacks import format_exception
from .retries import Backoff

#: The error of a run stopped by a cancel requested while it ran.
CANCELLED_WHILE_RUNNING: dict[str, str | None] = {
    "type": "Cancelled", "message": "cancelled while running", "traceback": None}


#: How many of a group's errors its stored message names.
GROUP_ERRORS_NAMED = 5


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The errors ``exc`` stands for: itself, or those of a group (an
    ``ExceptionGroup``, as an ``asyncio.TaskGroup`` raises), nested groups included."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def error_dict(exc: BaseException, *, with_traceback: bool = True) -> dict[str, str | None]:
    """The stored form of an exception: type, message and formatted traceback
    (without StackShift's own frames: see :mod:`stackshift.tracebacks`).

    A group's message also names the errors it holds (the first
    ``GROUP_ERRORS_NAMED``), as lists of runs show the message alone.

    The message and the traceback are kept as a log record's message is
    (:func:`~stackshift.runlogs.shortened`): a longer one keeps its beginning and
    its end. An error of megabytes would otherwise be stored several times over
    (attempt, run, step), and a remote worker's request carrying it would pass
    the server's body limit, leaving the attempt or the step unrecorded.
    """
    text = utf8(shortened(format_exception(exc))) if with_traceback else None
    return {"type": type(exc).__name__, "message": utf8(shortened(_message(exc))),
            "traceback": text}


def _message(exc: BaseException) -> str:
    if not isinstance(exc, BaseExceptionGroup):
        return _str(exc)
    held = list(leaves(exc))
    named = [type(e).__name__ + (f": {_str(e)}" if _str(e) else "")
             for e in held[:GROUP_ERRORS_NAMED]]
    if len(held) > GROUP_ERRORS_NAMED:
        named.append(f"and {len(held) - GROUP_ERRORS_NAMED} more")
    return f"{_str(exc)}: " + "; ".join(named)


def retry_after(exc: RetryAfterError) -> float | None:
    """The delay a ``RetryAfterError`` asks for, in seconds, or ``None`` when it has
    no usable one: a subclass that did not call ``super().__init__`` has no
    ``delay`` at all, and one may set a ``delay`` that is not a duration."""
    try:
        return parse_duration(exc.delay, name="RetryAfterError delay")
    except Exception:  # no attribute, a broken property, not a duration
        return None


def unusable_retry_after(exc: BaseException) -> list[str]:
    """Why each ``RetryAfterError`` ``exc`` stands for (:func:`leaves`) has no
    usable delay: one line per such error, empty when all have one."""
    reasons = []
    for e in leaves(exc):
        if isinstance(e, RetryAfterError) and retry_after(e) is None:
            reasons.append(f"{type(e).__name__}: {_unusable(e)}")
    return reasons


def _unusable(exc: RetryAfterError) -> str:
    try:
        delay = exc.delay
    except AttributeError:
        return ("it has no delay attribute (does its __init__ call "
                "super().__init__(delay, message)?)")
    except Exception as error:  # a property that raises
        return f"reading its delay raised {type(error).__name__}: {error}"
    try:
        parse_duration(delay, name="its delay")
    except Exception as error:  # a ValidationError naming what is wrong with it
        return str(error)
    return "its delay is usable"  # only called for an unusable one


def _str(exc: BaseException) -> str:
    """``str(exc)``, or what stands for it when the error's ``__str__`` raises
    (one that reads an attribute its ``__init__`` never set)."""
    try:
        return str(exc)
    except Exception as error:
        return f"<str() of the {type(exc).__name__} raised {type(error).__name__}: {error}>"


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
    refused); ``RetryAfterError`` sets the delay itself. A group of errors
    (:func:`leaves`) fails the run at once if it holds either of the first two,
    and is otherwise retried after the longest delay its errors ask for: each
    ``RetryAfterError`` its own, any other error the job's backoff. A
    ``RetryAfterError`` with no usable delay (:func:`retry_after`) counts as any
    other error: the attempt fails with it and the job's backoff sets the delay.
    """
    error = error_dict(exc)
    held = list(leaves(exc))
    if not retriable or any(isinstance(e, NonRetriableError | NonDeterminismError) for e in held):
        return Outcome("failed", error=error)
    if attempts_used >= max_attempts:
        return Outcome("failed", error=error)
    asked = [retry_after(e) for e in held if isinstance(e, RetryAfterError)]
    delays = [delay for delay in asked if delay is not None]
    if len(delays) < len(held):
        delays.append(backoff.delay(attempts_used))
    return Outcome("retrying", error=error, retry_at=now + max(delays))


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
    return _retry_or_fail(error, attempts_used=attempts_used, max_attempts=max_attempts,
                          retry_at=now)


def unsent(error_type: str, message: str, *, attempts_used: int, max_attempts: int,
           now: float) -> Outcome:
    """The outcome recorded for an attempt the engine could not hand to its handler
    (a push route's URL the server cannot call): it fails as a handler's error does,
    retried after the default backoff while ``max_attempts`` allow, then failed."""
    error = {"type": error_type, "message": message, "traceback": None}
    return _retry_or_fail(error, attempts_used=attempts_used, max_attempts=max_attempts,
                          retry_at=now + Backoff().delay(attempts_used))


def _retry_or_fail(error: dict[str, str | None], *, attempts_used: int, max_attempts: int,
                   retry_at: float) -> Outcome:
    if attempts_used >= max_attempts:
        return Outcome("failed", error=error)
    return Outcome("retrying", error=error, retry_at=retry_at)
