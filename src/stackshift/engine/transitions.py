"""The run state machine, written once.

``docs/state-machine.md`` draws the same table; the store's CHECK constraint lists
the same statuses. Every transition the engine makes is checked against
:data:`TRANSITIONS` and writes a timeline entry.
"""

from __future__ import annotations

from enum import StrEnum

from ..errors import InvalidTransitionError, ValidationError


class Status(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

#: status -> statuses it may move to.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.SCHEDULED: frozenset({Status.QUEUED, Status.CANCELLED}),
    Status.QUEUED: frozenset({Status.RUNNING, Status.CANCELLED}),
    # running -> queued: a worker shutting down releases an attempt it could not
    # finish in its grace period; the attempt continues on another worker.
    Status.RUNNING: frozenset(
        {
            Status.QUEUED,
            Status.WAITING,
            Status.RETRYING,
            Status.COMPLETED,
            Status.FAILED,
            Status.CANCELLED,
        }
    ),
    # A wait ends by resuming (queued again, same attempt), by timing out into
    # failed/cancelled, or by a cancel.
    Status.WAITING: frozenset({Status.QUEUED, Status.FAILED, Status.CANCELLED}),
    Status.RETRYING: frozenset({Status.QUEUED, Status.CANCELLED}),
    # Manual retry puts a finished run back in line with a fresh attempt budget.
    Status.FAILED: frozenset({Status.QUEUED}),
    Status.CANCELLED: frozenset({Status.QUEUED}),
    Status.COMPLETED: frozenset(),
}

#: Statuses a cancel acts on at once; a running run is stopped at its next step.
CANCELLABLE_AT_ONCE = frozenset(
    {Status.SCHEDULED, Status.QUEUED, Status.WAITING, Status.RETRYING}
)
#: Statuses a manual retry accepts.
RETRYABLE = frozenset({Status.FAILED, Status.CANCELLED})


def check(current: str, target: str) -> None:
    """Raise :class:`InvalidTransitionError` unless ``current -> target`` is allowed."""
    if Status(target) not in TRANSITIONS[Status(current)]:
        raise InvalidTransitionError(f"a {current} run cannot become {target}")


def parse_status(value: str) -> Status:
    """Validate a status name given by a user (filters, CLI)."""
    try:
        return Status(value)
    except ValueError:
        names = ", ".join(s.value for s in Status)
        raise ValidationError(f"unknown status {value!r}; expected one of: {names}") from None
