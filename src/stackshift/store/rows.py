"""Turning rows into the API's values. Rows never leave the store."""

from __future__ import annotations

from typing import Any

from ..durations import to_datetime
from ..models import (
    Attempt,
    Event,
    LogEntry,
    Run,
    RunError,
    Step,
    TimelineEntry,
    WaitingFor,
)
from ..serialization import loads
from .database import Row


def _dt(value: Any):  # type: ignore[no-untyped-def]
    return to_datetime(value)


def waiting_for(text: str | None) -> WaitingFor | None:
    data = loads(text)
    if not data:
        return None
    return WaitingFor(
        kind=data["kind"],
        step=data["step"],
        until=to_datetime(data.get("until")),
        event_name=data.get("event"),
        correlation_key=data.get("correlation_key"),
    )


def run(row: Row, *, created: bool = True) -> Run:
    status = row["status"]
    return Run(
        id=row["id"],
        job=row["job"],
        queue=row["queue"],
        status=status,
        payload=loads(row["payload"]),
        result=loads(row["result"]),
        error=RunError.from_dict(loads(row["error"])),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        idempotency_key=row["idempotency_key"],
        priority=row["priority"],
        concurrency_key=row["concurrency_key"],
        created_at=_dt(row["created_at"]),
        scheduled_at=_dt(row["scheduled_at"]),
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        next_attempt_at=_dt(row["available_at"])
        if status in ("scheduled", "retrying", "queued")
        else None,
        waiting_for=waiting_for(row["waiting_for"]) if status == "waiting" else None,
        created=created,
        retry_base=row["retry_base"],
        cancel_requested=status == "running" and bool(row["cancel_requested"]),
    )


def step(row: Row) -> Step:
    return Step(
        run_id=row["run_id"],
        key=row["key"],
        name=row["name"],
        kind=row["kind"],
        function=row["function"],
        status=row["status"],
        result=loads(row["result"]),
        error=RunError.from_dict(loads(row["error"])),
        attempt=row["attempt"],
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
    )


def attempt(row: Row) -> Attempt:
    return Attempt(
        run_id=row["run_id"],
        number=row["number"],
        status=row["status"],
        worker_id=row["worker_id"],
        started_at=_dt(row["started_at"]),
        finished_at=_dt(row["finished_at"]),
        error=RunError.from_dict(loads(row["error"])),
    )


def timeline_entry(row: Row) -> TimelineEntry:
    return TimelineEntry(
        id=row["id"],
        run_id=row["run_id"],
        at=_dt(row["at"]),
        kind=row["kind"],
        attempt=row["attempt"],
        step=row["step"],
        data=loads(row["data"]) or {},
    )


def log_entry(row: Row) -> LogEntry:
    return LogEntry(
        id=row["id"],
        run_id=row["run_id"],
        attempt=row["attempt"],
        step=row["step"],
        at=_dt(row["at"]),
        level=row["level"],
        logger=row["logger"],
        message=row["message"],
        fields=loads(row["fields"]) or {},
    )


def event(row: Row) -> Event:
    return Event(
        id=row["id"],
        name=row["name"],
        payload=loads(row["payload"]),
        correlation_key=row["correlation_key"] or None,
        received_at=_dt(row["received_at"]),
        idempotency_key=row["idempotency_key"],
    )
