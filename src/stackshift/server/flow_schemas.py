"""JSON shapes of queues, jobs, schedules and bulk retry (camelCase on the wire).

Like :mod:`stackshift.server.schemas`, this needs pydantic only: the remote
client converts responses back to the SDK's models with ``to_model``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StrictInt, StrictStr

from .. import models as m
from ..engine.cron import parse_cron
from ..flowcontrol import check_own_schedule_id, check_retry_many
from .schemas import Body, Concurrency, Name, RunError, Time, Wire, _utc

RateLimitText = Annotated[StrictStr, Field(examples=["100/m", "10/s"], max_length=50)]
Attempts = Annotated[StrictInt, Field(ge=1, le=1000)]

# The service's checks of these fields, run on each field alone so that a refusal
# names the field at fault (``cron: invalid cron expression 'x': ...``); the service
# checks them again together.


def _cron(expression: str) -> str:
    parse_cron(expression)  # in UTC: the zone is a field of its own
    return expression


def _timezone(name: str) -> str:
    parse_cron("@daily", name)  # an expression that passes: the zone's length and name
    return name


def _retried_status(status: str) -> str:
    return check_retry_many(status, None, None, None)


class Queue(Wire):
    name: str
    concurrency: int | None = Field(description="Most runs running at once, all workers.")
    rate_limit: str | None = Field(description="Most attempts started per period.")
    max_attempts: int | None = Field(description="Default for runs whose job sets none.")
    paused: bool
    counts: dict[str, int] = Field(description="Runs per status.")
    window: float = Field(description="Seconds over which throughput and failure rate count.")
    completed_in_window: int
    failed_in_window: int
    throughput: float = Field(description="Runs finished per minute over the window.")
    failure_rate: float | None = Field(description="Failed share of the runs finished in "
                                       "the window (null when none finished).")
    oldest_queued_age: float | None = Field(
        description="Seconds the oldest due run not yet started has waited.")
    live_workers: int | None = Field(
        default=None, description="Live workers that take this queue now, whatever jobs "
        "they know (0: its due runs wait until one starts; null from a server too old to "
        "count them).")

    @classmethod
    def of(cls, q: m.QueueInfo) -> Queue:
        return cls(
            name=q.name, concurrency=q.concurrency, rate_limit=q.rate_limit,
            max_attempts=q.max_attempts, paused=q.paused, counts=q.counts, window=q.window,
            completed_in_window=q.completed_in_window, failed_in_window=q.failed_in_window,
            throughput=q.throughput, failure_rate=q.failure_rate,
            oldest_queued_age=q.oldest_queued_age, live_workers=q.live_workers,
        )

    def to_model(self) -> m.QueueInfo:
        return m.QueueInfo(
            name=self.name, concurrency=self.concurrency, rate_limit=self.rate_limit,
            max_attempts=self.max_attempts, paused=self.paused, counts=dict(self.counts),
            window=self.window, completed_in_window=self.completed_in_window,
            failed_in_window=self.failed_in_window, throughput=self.throughput,
            failure_rate=self.failure_rate, oldest_queued_age=self.oldest_queued_age,
            live_workers=self.live_workers,
        )


class QueueList(Wire):
    items: list[Queue]


class Job(Wire):
    name: str
    queue_name: str | None = Field(description="The job's queue as its workers define it "
                                   "(null: the default queue).")
    max_attempts: int | None = Field(description="The job's attempts as its workers define "
                                     "them (null: the queue's, else the default).")
    live_workers: int = Field(description="Live workers that serve the job now: that "
                              "know it and take its queue (0: its runs there wait until "
                              "one starts).")
    registered_at: datetime = Field(description="When a worker last registered the job.")

    @classmethod
    def of(cls, j: m.JobInfo) -> Job:
        return cls(name=j.name, queue_name=j.queue, max_attempts=j.max_attempts,
                   live_workers=j.live_workers, registered_at=j.registered_at)

    def to_model(self) -> m.JobInfo:
        return m.JobInfo(name=self.name, queue=self.queue_name, max_attempts=self.max_attempts,
                         live_workers=self.live_workers,
                         registered_at=_utc(self.registered_at))  # type: ignore[arg-type]


class JobList(Wire):
    items: list[Job] = Field(description="Every job some worker has registered, by name.")


class ConfigureQueue(Body):
    """Fields left out keep their value; ``null`` removes a limit."""

    concurrency: Concurrency | None = None
    rate_limit: RateLimitText | None = None
    max_attempts: Attempts | None = None


class RetryMany(Body):
    queue_name: Name | None = None
    job: Name | None = None
    status: Annotated[StrictStr, AfterValidator(_retried_status)] = Field(
        "failed", description="`failed` or `cancelled`.")
    created_after: Time | None = None
    created_before: Time | None = None
    limit: Annotated[StrictInt, Field(ge=1)] | None = Field(
        None, description="Retry at most this many (every match without it, in one "
                          "request: give a limit and follow `nextCursor` for many).")
    cursor: Annotated[StrictStr, Field(max_length=100)] | None = Field(
        None, description="The `nextCursor` of the request before: only runs with an id "
                          "below it (newest first), so that a run this bulk retry "
                          "retried and that failed again is not retried twice.")


class Retried(Wire):
    retried: list[str] = Field(description="Ids of the runs put back in line.")
    count: int
    next_cursor: str | None = Field(
        description="Send it as `cursor` (with the same filters) for the rest; `null` "
                    "when no match is left.")


class Schedule(Wire):
    id: str
    job: str
    cron: str
    timezone: str
    payload: Any
    queue_name: str | None
    source: str = Field(description="`code` (from `@job(cron=...)`) or `api`.")
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None = Field(description="The last tick that fired.")
    last_run_id: str | None
    last_run_status: str | None
    last_error: RunError | None
    missed_ticks: int = Field(description="Ticks skipped because nothing was running then.")
    created_at: datetime
    overlap: Literal["allow", "skip"] = Field(
        "allow", description="`allow`: every tick starts a run. `skip`: a tick starts none "
        "while the run of the previous tick is unfinished.")
    skipped_ticks: int = Field(0, description="Ticks that started no run because the "
                               "previous tick's run was unfinished (`overlap: skip`).")

    @classmethod
    def of(cls, s: m.Schedule) -> Schedule:
        return cls(
            id=s.id, job=s.job, cron=s.cron, timezone=s.timezone, payload=s.payload,
            queue_name=s.queue, source=s.source, paused=s.paused, next_run_at=s.next_run_at,
            last_run_at=s.last_run_at, last_run_id=s.last_run_id,
            last_run_status=s.last_run_status, last_error=RunError.of(s.last_error),
            missed_ticks=s.missed_ticks, created_at=s.created_at,
            overlap=s.overlap,  # type: ignore[arg-type]
            skipped_ticks=s.skipped_ticks,
        )

    def to_model(self) -> m.Schedule:
        return m.Schedule(
            id=self.id, job=self.job, cron=self.cron, timezone=self.timezone,
            payload=self.payload, queue=self.queue_name, source=self.source,
            paused=self.paused, next_run_at=_utc(self.next_run_at),
            last_run_at=_utc(self.last_run_at), last_run_id=self.last_run_id,
            last_run_status=self.last_run_status,
            last_error=None if self.last_error is None else self.last_error.to_model(),
            missed_ticks=self.missed_ticks,
            created_at=_utc(self.created_at),  # type: ignore[arg-type]
            overlap=self.overlap, skipped_ticks=self.skipped_ticks,
        )


class ScheduleList(Wire):
    items: list[Schedule]


class CreateSchedule(Body):
    job: Name
    cron: Annotated[StrictStr, AfterValidator(_cron)] = Field(
        examples=["0 3 * * *", "@hourly", "@every 5m"])
    payload: Any = None
    timezone: Annotated[StrictStr, AfterValidator(_timezone)] = "UTC"
    queue_name: Name | None = None
    schedule_id: Annotated[Name, AfterValidator(check_own_schedule_id)] | None = Field(
        default=None, description="Create the schedule under this id, or change the one "
        "that has it to this definition (ids starting with 'job:' are refused).")
    overlap: Literal["allow", "skip"] = Field(
        "allow", description="`skip`: a tick starts no run while the run of the previous "
        "tick is unfinished (counted in `skippedTicks`). `allow`: every tick starts one.")


class ScheduleDeleted(Wire):
    id: str
    deleted: bool
