"""StackShift: durable jobs for Python."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from .client import (
    AsyncStackShift,
    BackoffOptions,
    JobOptions,
    RouteOptions,
    StackShift,
    WorkerOptions,
)
from .context import AsyncJobContext, AsyncSteps, JobContext, RunInfo, Steps
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
from .state import AsyncState, Lock, State

if TYPE_CHECKING:
    from .push import AsgiRoute, WsgiRoute
    from .worker import Worker

__all__ = [
    "AsyncJobContext",
    "AsyncStackShift",
    "AsyncState",
    "AsyncSteps",
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
    "Lock",
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
    "RouteOptions",
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
    "State",
    "Status",
    "Step",
    "StepNotAwaitedError",
    "StepResultNotJSONError",
    "StepResultTooLargeError",
    "Steps",
    "TimelineEntry",
    "ValidationError",
    "WaitTimeoutError",
    "WaitingFor",
    "Worker",
    "WorkerLost",
    "WorkerOptions",
    "asgi_app",
    "wsgi_app",
]


def asgi_app(client: StackShift | AsyncStackShift, **options: Unpack[RouteOptions]) -> AsgiRoute:
    """The push-mode handler route of ``client``'s jobs, for an ASGI app:
    ``client.asgi_app(**options)``.

    See :func:`stackshift.push.asgi_app`.
    """
    return client.asgi_app(**options)


def wsgi_app(client: StackShift | AsyncStackShift, **options: Unpack[RouteOptions]) -> WsgiRoute:
    """The push-mode handler route of ``client``'s jobs, for a WSGI app (Flask, Django):
    ``client.wsgi_app(**options)``.

    See :func:`stackshift.push.wsgi_app`.
    """
    return client.wsgi_app(**options)


def __getattr__(name: str) -> object:
    # Imported when asked for: a program that runs no worker (a web app that
    # starts runs, a command of the CLI) does without the worker's modules.
    if name == "Worker":
        from .worker import Worker

        return Worker
    raise AttributeError(f"module 'stackshift' has no attribute {name!r}")
