"""Errors raised by StackShift, and the control-flow signals used inside handlers.

User-facing errors derive from :class:`StackShiftError`. The signals that suspend,
cancel or abandon a handler derive from :class:`BaseException` so that a handler's
``except Exception:`` cannot swallow them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .wording import did_you_mean


class StackShiftError(Exception):
    """Base class of every error StackShift raises on purpose."""


class ValidationError(StackShiftError, ValueError):
    """Input that StackShift refuses before writing anything."""


class PayloadTooLargeError(ValidationError):
    """A payload, step result, event payload or state value over its size limit."""


class IdempotencyConflictError(StackShiftError):
    """The idempotency key is already bound to a different job or payload.

    ``existing_run_id`` names the run that owns the key. For an event's key
    (``events.send``: same key, another name, correlation key or payload),
    ``existing_event_id`` names the event that owns it and ``existing_run_id``
    is ``None``.
    """

    def __init__(self, message: str, existing_run_id: str | None = None, *,
                 existing_event_id: str | None = None) -> None:
        super().__init__(message)
        self.existing_run_id = existing_run_id
        self.existing_event_id = existing_event_id


class NonRetriableError(StackShiftError):
    """Raise it from a handler (or a step) to fail the run now, without retrying."""


class RetryAfterError(StackShiftError):
    """Raise it to fail this attempt and retry no sooner than ``delay``."""

    def __init__(self, delay: Any, message: str | None = None) -> None:
        from .durations import parse_duration

        self.delay = parse_duration(delay, name="RetryAfterError delay")
        super().__init__(message or f"retry after {self.delay:g}s")


class NonDeterminismError(StackShiftError):
    """A replay found a different step function where a step was recorded."""


class WaitTimeoutError(StackShiftError):
    """A wait for an event passed its timeout with ``on_timeout="fail"``."""


class RunNotFoundError(StackShiftError, LookupError):
    """No run has the given id."""


class EventNotFoundError(StackShiftError, LookupError):
    """No event has the given id."""


class EndpointNotFoundError(StackShiftError, LookupError):
    """No push endpoint has the given id."""


class ApiKeyNotFoundError(StackShiftError, LookupError):
    """No API key has the given id or prefix."""


class LockNotAcquiredError(StackShiftError):
    """The lock is held by another owner and ``wait`` passed."""


class InvalidTransitionError(StackShiftError):
    """An operation asked for a status change the run state machine forbids."""


class StepResultTooLargeError(PayloadTooLargeError, NonRetriableError):
    """A step returned a result over the configured limit.

    The step's function ran but its result was not stored. Unless the handler
    catches it, the run fails at once: another attempt would run the function
    (and its side effects) again.
    """


class StepResultNotJSONError(NonRetriableError, TypeError):
    """A step returned a result that is not JSON (a ``Decimal``, a ``set``, an object).

    The step's function ran but its result was not stored. It is a ``TypeError``,
    so a handler may catch it; unless it does, the run fails at once: another
    attempt would run the function (and its side effects) again.
    """


class StepNotAwaitedError(NonRetriableError):
    """An async handler called a ``ctx.step`` or ``ctx.state`` method without
    ``await``: the call did nothing. The run fails at once: every attempt would
    make the same mistake. The message names each such call and its line."""


class WorkerLost(StackShiftError):
    """Recorded on an attempt whose worker stopped renewing its lease."""


class AttemptTimeoutError(StackShiftError):
    """Recorded on an attempt that ran past the job's ``timeout``."""


class AuthenticationError(StackShiftError):
    """The server refused the API key: missing, unknown or revoked (HTTP 401)."""


class RemoteError(StackShiftError):
    """The server answered with an error this client has no exception class for."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


# --- control-flow signals: BaseException so ``except Exception`` cannot catch them ---


class HandlerSignal(BaseException):
    """Base of the signals that end a handler invocation early."""


class Suspend(HandlerSignal):
    """The run is now waiting (sleep or event); the invocation ends here."""


class CancelSignal(HandlerSignal):
    """The run was cancelled (or timed out); stop at this step boundary."""


class LeaseLost(HandlerSignal):
    """This worker no longer owns the run; abandon the invocation without writing."""


class ScheduleNotFoundError(StackShiftError, LookupError):
    """No schedule has the given id."""


class QueueNotFoundError(StackShiftError, LookupError):
    """No queue has the given name: it holds no runs and has no settings, so no
    list shows it (configuring a queue of a new name is not refused)."""

    @classmethod
    def named(cls, name: str, known: Iterable[str] = ()) -> QueueNotFoundError:
        """The error for ``name``, naming the queues of ``known`` whose names are close."""
        return cls(f"no queue named {name!r}: it holds no runs and has no settings"
                   f"{did_you_mean(name, known)}")
