"""``/v1/queues``, ``/v1/jobs``, ``/v1/schedules`` and ``/v1/runs/retry-many``: flow
control over HTTP.

Each route is one call on the service, as in :mod:`stackshift.server.routes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response

from ..durations import parse_typed_duration
from ..errors import ScheduleNotFoundError
from ..store.queues import KEEP
from . import flow_schemas as f
from . import schemas as s
from .bodies import JsonBodyRoute
from .errors import ApiError
from .routes import ERRORS, NOT_FOUND, JobFilter, Limit, QueueName, service_of
from .schemas import QUERY_DURATION_PATTERN, ErrorResponse

router = APIRouter(prefix="/v1", responses=ERRORS, route_class=JsonBodyRoute)

T = TypeVar("T")
#: The window of a queue's numbers: text, as every query value is, so a bare number
#: is seconds (as a duration typed on the command line is).
Window = Annotated[str, Query(
    pattern=QUERY_DURATION_PATTERN, examples=["15m", "3600"],
    description="The window over which throughput and failure rate count: a number of "
                "seconds (`3600`, `1.5`) or a duration (`15m`, `1h30m`), from 1s to 90d; "
                "any other is 422.")]


def _seconds(window: str) -> float:
    return parse_typed_duration(window, name="window")


def _schedule(call: Callable[[], T]) -> T:
    try:
        return call()
    except ScheduleNotFoundError as exc:
        raise ApiError(404, "schedule_not_found", str(exc)) from None


# -- queues -------------------------------------------------------------------------------


@router.get("/queues", tags=["queues"], summary="List queues with settings and numbers")
def list_queues(request: Request, window: Window = "15m") -> f.QueueList:
    queues = service_of(request).list_queues(_seconds(window))
    return f.QueueList(items=[f.Queue.of(q) for q in queues])


#: A queue that holds no runs and has no settings (which no list shows) is unknown.
QUEUE_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse,
          "description": "`queue_not_found`: the queue holds no runs and has no settings."},
}


@router.get("/queues/{name}", tags=["queues"], summary="A queue's settings and numbers",
            responses=QUEUE_NOT_FOUND)
def get_queue(name: QueueName, request: Request, window: Window = "15m") -> f.Queue:
    return f.Queue.of(service_of(request).queue_info(name, _seconds(window)))


@router.patch("/queues/{name}", tags=["queues"], summary="Change a queue's settings")
def configure_queue(name: QueueName, body: f.ConfigureQueue, request: Request) -> f.Queue:
    """Fields left out keep their value; `null` removes a limit."""
    given: dict[str, Any] = {
        field: getattr(body, field) if field in body.model_fields_set else KEEP
        for field in ("concurrency", "rate_limit", "max_attempts")
    }
    return f.Queue.of(service_of(request).configure_queue(name, **given))


@router.post("/queues/{name}/pause", tags=["queues"], summary="Pause a queue")
def pause_queue(name: QueueName, request: Request) -> f.Queue:
    return f.Queue.of(service_of(request).pause_queue(name))


@router.post("/queues/{name}/resume", tags=["queues"], summary="Resume a paused queue")
def resume_queue(name: QueueName, request: Request) -> f.Queue:
    return f.Queue.of(service_of(request).resume_queue(name))


@router.get("/queues/{name}/dead-letters", tags=["queues"], responses=QUEUE_NOT_FOUND,
            summary="Runs of the queue that failed for good, the latest failure first")
def dead_letters(name: QueueName, request: Request, job: JobFilter = None, limit: Limit = 50,
                 cursor: str | None = None) -> s.RunPage:
    page = service_of(request).dead_letters(name, job=job, limit=limit, cursor=cursor)
    return s.RunPage(items=[s.Run.of(r) for r in page.items], next_cursor=page.next_cursor)


@router.post("/runs/retry-many", tags=["runs"], summary="Retry failed or cancelled runs in bulk")
def retry_many(body: f.RetryMany, request: Request) -> f.Retried:
    """Retries the matching runs from the newest id down, at most `limit` of them,
    200 to a transaction. A large bulk retry goes as requests of a bounded `limit`,
    each with the `nextCursor` of the one before as `cursor`, until it is `null`
    (the remote client and `stackshift queues retry` ask for 1,000 at a time)."""
    page = service_of(request).retry_page(
        queue=body.queue_name, job=body.job, status=body.status,
        created_after=body.created_after, created_before=body.created_before, limit=body.limit,
        cursor=body.cursor,
    )
    return f.Retried(retried=page.items, count=len(page.items), next_cursor=page.next_cursor)


# -- jobs ---------------------------------------------------------------------------------


@router.get("/jobs", tags=["jobs"], summary="List the jobs workers have registered")
def list_jobs(request: Request) -> f.JobList:
    """Every job some worker has registered, with the live workers that serve it now
    (as the dashboard's Jobs page shows them). A job no worker has ever registered
    is not listed: runs started for it wait until a worker with its code starts."""
    return f.JobList(items=[f.Job.of(j) for j in service_of(request).list_jobs()])


# -- schedules ----------------------------------------------------------------------------


@router.get("/schedules", tags=["schedules"], summary="List schedules")
def list_schedules(request: Request) -> f.ScheduleList:
    return f.ScheduleList(items=[f.Schedule.of(x) for x in service_of(request).list_schedules()])


@router.post("/schedules", status_code=201, tags=["schedules"],
             responses={200: {"model": f.Schedule, "description": "The `scheduleId` named an "
                              "existing schedule: it now has this definition."}},
             summary="Create a schedule (or, given its scheduleId, change it)")
def create_schedule(body: f.CreateSchedule, request: Request,
                    response: Response) -> f.Schedule:
    saved, created = service_of(request).save_schedule(
        body.job, cron=body.cron, payload=body.payload, timezone=body.timezone,
        queue_name=body.queue_name, schedule_id=body.schedule_id, overlap=body.overlap,
    )
    response.status_code = 201 if created else 200
    return f.Schedule.of(saved)


@router.get("/schedules/{schedule_id}", responses=NOT_FOUND, tags=["schedules"],
            summary="Get a schedule")
def get_schedule(schedule_id: str, request: Request) -> f.Schedule:
    service = service_of(request)
    return f.Schedule.of(_schedule(lambda: service.get_schedule(schedule_id)))


@router.post("/schedules/{schedule_id}/pause", responses=NOT_FOUND, tags=["schedules"],
             summary="Pause a schedule")
def pause_schedule(schedule_id: str, request: Request) -> f.Schedule:
    service = service_of(request)
    return f.Schedule.of(_schedule(lambda: service.pause_schedule(schedule_id)))


@router.post("/schedules/{schedule_id}/resume", responses=NOT_FOUND, tags=["schedules"],
             summary="Resume a schedule from now on")
def resume_schedule(schedule_id: str, request: Request) -> f.Schedule:
    service = service_of(request)
    return f.Schedule.of(_schedule(lambda: service.resume_schedule(schedule_id)))


@router.delete("/schedules/{schedule_id}", responses=NOT_FOUND, tags=["schedules"],
               summary="Delete a schedule (its runs stay)")
def delete_schedule(schedule_id: str, request: Request) -> f.ScheduleDeleted:
    if not service_of(request).delete_schedule(schedule_id):
        raise ApiError(404, "schedule_not_found", f"no schedule with id {schedule_id!r}")
    return f.ScheduleDeleted(id=schedule_id, deleted=True)
