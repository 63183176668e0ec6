"""The storage seam: the values that cross it.

The store's methods (see :class:`stackshift.store.sqlstore.SqlStore`) name
intentions (``start_run``, ``claim_runs``, ``save_step``, ``send_event``); each
runs as one short transaction. The engine decides, the store applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..models import Run, Step


@dataclass(frozen=True)
class NewRun:
    id: str
    job: str
    queue: str
    payload: str  # canonical JSON
    #: None: the queue's default, else ``default_max_attempts``
    max_attempts: int | None
    priority: int
    concurrency_key: str | None
    scheduled_at: float | None
    idempotency_key: str | None
    idempotency_expires_at: float | None
    default_max_attempts: int = 3


@dataclass(frozen=True)
class Lease:
    """Proof that a worker holds a run for one attempt."""

    run_id: str
    worker_id: str
    attempt: int


@dataclass(frozen=True)
class ClaimedRun:
    run: Run
    lease: Lease
    retry_base: int
    #: completed steps by key, for replay
    steps: dict[str, Step] = field(default_factory=dict)
    new_attempt: bool = True


@dataclass(frozen=True)
class StepWrite:
    key: str
    name: str
    kind: str  # run, sleep, wait
    function: str | None
    status: str  # completed, failed, waiting
    result: str | None  # canonical JSON
    error: dict[str, Any] | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class LogWrite:
    at: float
    level: str
    logger: str
    message: str
    step: str | None
    attempt: int | None
    #: the record's fields as a JSON object's text (see runlogs.record_fields)
    fields: str | None = None

    @property
    def chars(self) -> int:
        """Characters of its message and fields."""
        return len(self.message) + len(self.fields or "")


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, as decided by :mod:`stackshift.engine.outcomes`."""

    status: str  # completed, failed, retrying, cancelled
    result: str | None = None
    error: dict[str, Any] | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class RunFilter:
    status: str | None = None
    job: str | None = None
    queue: str | None = None
    idempotency_key: str | None = None
    correlation_key: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    search: str | None = None


@dataclass(frozen=True)
class ExpiredLease:
    lease: Lease
    job: str
    attempts_used: int  # attempts in the current budget
    max_attempts: int
