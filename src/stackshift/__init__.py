"""StackShift: durable jobs for Python."""

from .client import AsyncStackShift, StackShift
from .context import JobContext, RunInfo
from .engine.retries import Backoff
from .engine.transitions import Status
from .errors import (
    EventNotFoundError,
    IdempotencyConflictError,
    InvalidTransitionError,
    LockNotAcquiredError,
    NonDeterminismError,
    NonRetriableError,
    PayloadTooLargeError,
    RetryAfterError,
    RunNotFoundError,
    ScheduleNotFoundError,
    StackShiftError,
    StepResultTooLargeError,
    ValidationError,
    WaitTimeoutError,
)
from .models import (
    Attempt,
    Event,
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
from .remote import AuthenticationError, RemoteError
from .settings import Settings

__all__ = [
    "AsyncStackShift",
    "Attempt",
    "AuthenticationError",
    "Backoff",
    "Event",
    "EventNotFoundError",
    "IdempotencyConflictError",
    "InvalidTransitionError",
    "JobContext",
    "LockNotAcquiredError",
    "LogEntry",
    "NonDeterminismError",
    "NonRetriableError",
    "Page",
    "PayloadTooLargeError",
    "QueueInfo",
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
    "StepResultTooLargeError",
    "TimelineEntry",
    "ValidationError",
    "WaitTimeoutError",
    "WaitingFor",
]
