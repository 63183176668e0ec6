"""StackShift: durable jobs for Python."""

from typing import Any

from .client import AsyncStackShift, BackoffOptions, JobOptions, StackShift, WorkerOptions
from .context import AsyncJobContext, JobContext, RunInfo
from .engine.retries import Backoff
from .engine.transitions import Status
from .errors import (
    AttemptTimeoutError,
    AuthenticationError,
    EndpointNotFoundError,
    EventNotFoundError,
    IdempotencyConflictError,
    InvalidTransitionError,
    LockNotAcquiredError,
    NonDeterminismError,
    NonRetriableError,
    PayloadTooLargeError,
    QueueNotFoundError,
    RemoteError,
    RetryAfterError,
    RunNotFoundError,
    ScheduleNotFoundError,
    StackShiftError,
    StepNotAwaitedError,
    StepResultNotJSONError,
    StepResultTooLargeError,
    ValidationError,
    WaitTimeoutError,
    WorkerLost,
)
from .models import (
    Attempt,
    Event,
    JobInfo,
    LogEntry,
    Page,
    QueueInfo,
    Run,
    RunError,
    Schedule,
    SentEvent,
    Step,
    TimelineEntry,
    WaitingFor,
)
from .settings import Settings

__all__ = [
    "AsyncJobContext",
    "AsyncStackShift",
    "Attempt",
    "AttemptTimeoutError",
    "AuthenticationError",
    "Backoff",
    "BackoffOptions",
    "EndpointNotFoundError",
    "Event",
    "EventNotFoundError",
    "IdempotencyConflictError",
    "InvalidTransitionError",
    "JobContext",
    "JobInfo",
    "JobOptions",
    "LockNotAcquiredError",
    "LogEntry",
    "NonDeterminismError",
    "NonRetriableError",
    "Page",
    "PayloadTooLargeError",
    "QueueInfo",
    "QueueNotFoundError",
    "RemoteError",
    "RetryAfterError",
    "Run",
    "RunError",
    "RunInfo",
    "RunNotFoundError",
    "Schedule",
    "ScheduleNotFoundError",
    "SentEvent",
    "Settings",
    "StackShift",
    "StackShiftError",
    "Status",
    "Step",
    "StepNotAwaitedError",
    "StepResultNotJSONError",
    "StepResultTooLargeError",
    "TimelineEntry",
    "ValidationError",
    "WaitTimeoutError",
    "WaitingFor",
    "WorkerLost",
    "WorkerOptions",
    "asgi_app",
    "wsgi_app",
]


def asgi_app(client: StackShift | AsyncStackShift, **options: Any) -> Any:
    """The push-mode handler route of ``client``'s jobs, for an ASGI app.

    See :func:`stackshift.push.asgi_app`.
    """
    from .push import asgi_app as build

    return build(client, **options)


def wsgi_app(client: StackShift | AsyncStackShift, **options: Any) -> Any:
    """The push-mode handler route of ``client``'s jobs, for a WSGI app (Flask, Django).

    See :func:`stackshift.push.wsgi_app`.
    """
    from .push import wsgi_app as build

    return build(client, **options)
