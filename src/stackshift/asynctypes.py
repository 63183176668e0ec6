"""What a type checker sees of :class:`~stackshift.AsyncStackShift`'s ``runs``,
``events``, ``queues``, ``schedules`` and ``queue(name)``: the methods of the
sync classes (:class:`~stackshift.client.Runs` and the others), awaitable.

At run time each is a wrapper that runs the sync method in a thread (only
``runs.wait`` has its own code, which holds no thread), so these protocols only
declare the signatures. Imported for type checking only.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal, Protocol

from .models import (
    Attempt,
    Event,
    LogEntry,
    Page,
    QueueInfo,
    Run,
    Schedule,
    SentEvent,
    Step,
    TimelineEntry,
)

Time = datetime | str


class AsyncRuns(Protocol):
    async def get(self, run_id: str) -> Run: ...

    async def list(
        self, *, status: str | None = None, job: str | None = None, queue: str | None = None,
        idempotency_key: str | None = None, correlation_key: str | None = None,
        created_after: Time | None = None, created_before: Time | None = None,
        search: str | None = None, limit: int = 50, cursor: str | None = None,
    ) -> Page[Run]: ...

    async def wait(self, run_id: str, timeout: Any = None) -> Run: ...

    async def cancel(self, run_id: str, reason: str | None = None) -> Run: ...

    async def retry(self, run_id: str) -> Run: ...

    async def start_again(self, run_id: str) -> Run: ...

    async def retry_many(
        self, *, queue: str | None = None, job: str | None = None, status: str = "failed",
        created_after: Time | None = None, created_before: Time | None = None,
        limit: int | None = None, page_size: int = ...,
        progress: Callable[[int], None] | None = None,
    ) -> builtins.list[str]: ...

    async def timeline(self, run_id: str) -> builtins.list[TimelineEntry]: ...

    async def logs(self, run_id: str, *, after: int | None = None, limit: int | None = None,
                   last: int | None = None) -> builtins.list[LogEntry]: ...

    async def attempts(self, run_id: str) -> builtins.list[Attempt]: ...

    async def steps(self, run_id: str) -> builtins.list[Step]: ...


class AsyncEvents(Protocol):
    async def send(self, name: str, payload: Any = None, *, correlation_key: str | None = None,
                   idempotency_key: str | None = None) -> SentEvent: ...

    async def get(self, event_id: str) -> Event: ...

    async def list(self, *, name: str | None = None, correlation_key: str | None = None,
                   limit: int = 50, cursor: str | None = None) -> Page[Event]: ...


class AsyncQueue(Protocol):
    name: str

    async def enqueue(
        self, job: str, payload: Any = None, *, idempotency_key: str | None = None,
        idempotency_ttl: Any = None, max_attempts: int | None = None,
        scheduled_at: Time | None = None, delay: Any = None, priority: int | None = None,
        concurrency_key: str | None = None,
    ) -> Run: ...

    async def configure(self, *, concurrency: Any = ..., rate_limit: Any = ...,
                        max_attempts: Any = ...) -> QueueInfo: ...

    async def pause(self) -> QueueInfo: ...

    async def resume(self) -> QueueInfo: ...

    async def info(self, window: Any = "15m") -> QueueInfo: ...

    async def stats(self, window: Any = "15m") -> QueueInfo: ...

    async def dead_letters(self, *, job: str | None = None, limit: int = 50,
                           cursor: str | None = None) -> Page[Run]: ...

    async def retry_dead_letters(self, *, job: str | None = None) -> builtins.list[str]: ...


class AsyncQueues(Protocol):
    async def list(self, window: Any = "15m") -> builtins.list[QueueInfo]: ...

    async def get(self, name: str, window: Any = "15m") -> QueueInfo: ...


class AsyncSchedules(Protocol):
    async def create(self, job: str, *, cron: str, payload: Any = None, timezone: str = "UTC",
                     queue_name: str | None = None, schedule_id: str | None = None,
                     overlap: Literal["allow", "skip"] = "allow") -> Schedule: ...

    async def get(self, schedule_id: str) -> Schedule: ...

    async def list(self) -> builtins.list[Schedule]: ...

    async def pause(self, schedule_id: str) -> Schedule: ...

    async def resume(self, schedule_id: str) -> Schedule: ...

    async def delete(self, schedule_id: str) -> bool: ...
