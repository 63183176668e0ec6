"""The ``/v1`` JSON API: one route per SDK operation, each a call on the service.

Routes convert camelCase bodies to the service's arguments and its values back
to camelCase; they hold no rules of their own. Errors the service raises are
turned into responses by :mod:`stackshift.server.errors`.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, cast

import anyio
import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import AfterValidator, BeforeValidator
from starlette.convertors import Convertor, register_url_convertor

from ..checks import MAX_LOG_PAGE
from ..durations import TYPED_SECONDS, to_datetime
from ..engine.transitions import Status
from ..jobs import check_name
from ..service import Service
from ..settings import LONGEST_KEY
from . import schemas as s
from .bodies import JsonBodyRoute
from .errors import ApiError
from .schemas import NAME_PATTERN, ErrorResponse

#: Longest single long-poll of ``GET /v1/runs/{id}/wait``; clients poll again.
MAX_WAIT_SECONDS = 60.0


def _wait_timeout(value: float) -> float:
    """The ``timeout`` of a long-poll: one message for any value out of range,
    ``nan`` included (which is in no range)."""
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise ValueError(f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}, "
                         f"got {value:g}")
    return value


_WHOLE = re.compile(r"-?[0-9]+")


def _seconds_in_digits(value: object) -> object:
    """A query string's seconds: digits, with a fraction and a minus sign if any; not
    ``1_0``, ``+5``, `` 5``, ``1e3`` or ``nan``, which Python's ``float()`` also reads."""
    if isinstance(value, str) and not TYPED_SECONDS.fullmatch(value):
        raise ValueError(f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g} written"
                         f" in digits (e.g. '10', '1.5'), got {value!r}")
    return value


def _whole_number(value: object) -> object:
    """A query string's whole number: digits, with a minus sign for a negative one;
    not ``1.0``, ``1_0``, ``+5`` or `` 5``, which Python's ``int()`` would also read."""
    if isinstance(value, str) and not _WHOLE.fullmatch(value):
        raise ValueError(f"must be a whole number written in digits, got {value!r}")
    return value


#: Follows the ``Query(...)`` of a whole-number query parameter (after it, so that
#: the API document keeps the bounds the ``Query`` sets).
DIGITS_ONLY = BeforeValidator(_whole_number)

WaitTimeout = Annotated[
    float, BeforeValidator(_seconds_in_digits), AfterValidator(_wait_timeout),
    Query(description="Seconds to wait at most.",
          json_schema_extra={"maximum": MAX_WAIT_SECONDS, "minimum": 0})]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse,
          "description": "Malformed JSON, or a path or query string that is not UTF-8 once "
                         "percent-decoded."},
    401: {"model": ErrorResponse, "description": "Missing, unknown or revoked API key."},
    413: {"model": ErrorResponse, "description": "Request body over the size limit."},
    415: {"model": ErrorResponse,
          "description": "A body sent without `Content-Type: application/json` (or another"
                         " JSON type), or declared in a charset other than UTF-8."},
    422: {"model": ErrorResponse, "description": "Invalid input."},
    503: {"model": ErrorResponse,
          "description": "The database cannot be reached or did not answer in time: retry."},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Unknown id."},
}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorResponse, "description": "Conflicts with the current state."},
}

router = APIRouter(prefix="/v1", responses=ERRORS, route_class=JsonBodyRoute)

RunId = Annotated[str, Path(description="A run id (`run_...`).")]
#: A queue named in the path, checked as the service checks a queue name, so that a
#: name in the wrong form is refused naming the parameter (``name: queue name ...``).
QueueName = Annotated[str, Path(description="A queue name.",
                                json_schema_extra={"pattern": NAME_PATTERN}),
                      AfterValidator(lambda name: check_name(name, "queue name"))]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size."), DIGITS_ONLY]
#: The job filter of a list of runs: a value no job name can be (``?job=``) is 422.
JobFilter = Annotated[str | None, Query(
    pattern=NAME_PATTERN,
    description="Only runs of this job; a value that is not a job name (empty, blank) is 422.")]
#: The end of a key filter's description: an empty key, which no run or event has.
NOT_EMPTY = "; empty is 422 (leave it out for no filter)."


def service_of(request: Request) -> Service:
    return cast(Service, request.app.state.service)


def _run(run: Any, response: Response) -> s.Run:
    response.status_code = 201 if run.created else 200
    return s.Run.of(run)


# -- starting work ----------------------------------------------------------------------


@router.post(
    "/runs",
    status_code=201,
    responses={200: {"model": s.Run, "description": "An idempotency key matched an "
                     "existing run (`created` is false)."}, **CONFLICT},
    tags=["runs"],
    summary="Start a run",
)
def start_run(body: s.StartRun, request: Request, response: Response) -> s.Run:
    """Durably create a run, or return the run an idempotency key maps to."""
    run = service_of(request).start(body.job, body.payload, **body.options())
    return _run(run, response)


@router.post(
    "/runs/many",
    status_code=201,
    responses={200: {"model": s.RunList, "description": "No run was created: every"
                     " payload's idempotency key matched an existing run (each `created` is"
                     " false), or `payloads` was empty."}, **CONFLICT},
    tags=["runs"],
    summary="Start many runs of a job in one transaction",
)
def start_runs(body: s.StartRuns, request: Request, response: Response) -> s.RunList:
    """Durably create a run per payload (or return the run each idempotency key maps
    to), all in one transaction: an idempotency conflict of any one writes none."""
    runs = service_of(request).start_many(body.job, body.payloads, **body.options())
    response.status_code = 201 if any(run.created for run in runs) else 200
    return s.RunList(items=[s.Run.of(run) for run in runs])


@router.post(
    "/queues/{name}/runs",
    status_code=201,
    responses={200: {"model": s.Run, "description": "An idempotency key matched an "
                     "existing run (`created` is false)."}, **CONFLICT},
    tags=["runs"],
    summary="Enqueue a run on a queue",
)
def enqueue_run(name: QueueName, body: s.EnqueueRun, request: Request,
                response: Response) -> s.Run:
    options = body.model_dump(exclude={"job", "payload"})
    run = service_of(request).start(body.job, body.payload, queue_name=name, **options)
    return _run(run, response)


# -- runs ---------------------------------------------------------------------------------


@router.get("/runs", tags=["runs"], summary="List runs, newest first")
def list_runs(
    request: Request,
    status: Status | None = None,
    job: JobFilter = None,
    queue_name: Annotated[str | None, Query(
        alias="queueName", pattern=NAME_PATTERN,
        description="Only runs on this queue; a value that is not a queue name (empty, blank)"
                    " is 422.")] = None,
    idempotency_key: Annotated[str | None, Query(
        alias="idempotencyKey", description="The run started with this key" + NOT_EMPTY)] = None,
    correlation_key: Annotated[str | None, Query(
        alias="correlationKey",
        description="Runs that waited for or received events with this key" + NOT_EMPTY)] = None,
    created_after: Annotated[str | None, Query(alias="createdAfter",
                                               json_schema_extra={"format": "date-time"})] = None,
    created_before: Annotated[str | None, Query(alias="createdBefore",
                                                json_schema_extra={"format": "date-time"})] = None,
    search: Annotated[str | None, Query(
        description="A run id or idempotency key" + NOT_EMPTY)] = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> s.RunPage:
    page = service_of(request).list_runs(
        status=None if status is None else status.value, job=job, queue=queue_name,
        idempotency_key=idempotency_key, correlation_key=correlation_key,
        created_after=created_after, created_before=created_before, search=search, limit=limit,
        cursor=cursor,
    )
    return s.RunPage(items=[s.Run.of(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/runs/{run_id}", responses=NOT_FOUND, tags=["runs"], summary="Get a run")
def get_run(run_id: RunId, request: Request) -> s.Run:
    return s.Run.of(service_of(request).get_run(run_id))


@router.get("/runs/{run_id}/wait", responses=NOT_FOUND, tags=["runs"],
            summary="Wait for a run to finish (long-poll)")
async def wait_run(
    run_id: RunId,
    request: Request,
    timeout: WaitTimeout = 30.0,
) -> s.Run:
    """The run once it is completed, failed or cancelled, or as it is after ``timeout``.

    The response is 200 either way; check ``status``, and poll again if needed.
    """
    service = service_of(request)
    stopping = request.app.state.stopping
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        run = await anyio.to_thread.run_sync(service.get_run, run_id)
        if run.is_terminal or time.monotonic() >= deadline or stopping.is_set():
            return s.Run.of(run)
        await anyio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 1.5, 0.25)


@router.post("/runs/{run_id}/cancel", responses={**NOT_FOUND, **CONFLICT}, tags=["runs"],
             summary="Cancel a run")
def cancel_run(run_id: RunId, request: Request, body: s.CancelRun | None = None) -> s.Run:
    reason = body.reason if body is not None else None
    return s.Run.of(service_of(request).cancel_run(run_id, reason))


@router.post("/runs/{run_id}/retry", responses={**NOT_FOUND, **CONFLICT}, tags=["runs"],
             summary="Retry a failed or cancelled run")
def retry_run(run_id: RunId, request: Request) -> s.Run:
    return s.Run.of(service_of(request).retry_run(run_id))


@router.post("/runs/{run_id}/again", status_code=201, responses=NOT_FOUND, tags=["runs"],
             summary="Start a new run with a run's payload and options")
def start_again(run_id: RunId, request: Request) -> s.Run:
    return s.Run.of(service_of(request).start_again(run_id))


@router.get("/runs/{run_id}/timeline", responses=NOT_FOUND, tags=["runs"])
def run_timeline(run_id: RunId, request: Request) -> s.TimelineList:
    items = service_of(request).timeline(run_id)
    return s.TimelineList(items=[s.TimelineEntry.of(t) for t in items])


@router.get("/runs/{run_id}/logs", responses=NOT_FOUND, tags=["runs"])
def run_logs(run_id: RunId, request: Request, after: Annotated[int | None, Query(
        ge=0, lt=2 ** 63, description="Only the records logged after the one with this id"
        " (the last one read), to follow a running run."), DIGITS_ONLY] = None,
        limit: Annotated[int | None, Query(
            ge=1, le=MAX_LOG_PAGE, description="At most this many records, the first"
            " ones after `after`: a long log is read in pages, each `after` the last"
            " record's id of the page before, until a page comes back shorter. Without"
            " it, every record in one answer."), DIGITS_ONLY] = None,
        last: Annotated[int | None, Query(
            ge=1, le=MAX_LOG_PAGE, description="Only the latest this many records (oldest"
            " first), without `after` or `limit`."), DIGITS_ONLY] = None) -> s.LogList:
    items = service_of(request).logs(run_id, after, limit, last)
    return s.LogList(items=[s.LogEntry.of(e) for e in items])


@router.get("/runs/{run_id}/attempts", responses=NOT_FOUND, tags=["runs"])
def run_attempts(run_id: RunId, request: Request) -> s.AttemptList:
    items = service_of(request).attempts(run_id)
    return s.AttemptList(items=[s.Attempt.of(a) for a in items])


@router.get("/runs/{run_id}/steps", responses=NOT_FOUND, tags=["runs"])
def run_steps(run_id: RunId, request: Request) -> s.StepList:
    return s.StepList(items=[s.Step.of(x) for x in service_of(request).steps(run_id)])


# -- events -------------------------------------------------------------------------------


@router.post(
    "/events",
    status_code=201,
    responses={200: {"model": s.SentEvent, "description": "An idempotency key matched an "
                     "earlier event (`duplicate` is true); nothing was resumed again, and "
                     "`resumedRunIds` lists the runs the first send resumed."},
               409: {"model": ErrorResponse, "description": "The idempotency key belongs to "
                     "an event with another name, correlation key or payload "
                     "(`existingEventId`); nothing was written."}},
    tags=["events"],
    summary="Send an event",
)
def send_event(body: s.SendEvent, request: Request, response: Response) -> s.SentEvent:
    """Store the event and resume every run waiting for its name and correlation key."""
    sent = service_of(request).send_event(
        body.name, body.payload, correlation_key=body.correlation_key,
        idempotency_key=body.idempotency_key,
    )
    response.status_code = 200 if sent.duplicate else 201
    return s.SentEvent.of(sent)


@router.get("/events", tags=["events"], summary="List events, newest first")
def list_events(
    request: Request,
    name: Annotated[str | None, Query(
        pattern=NAME_PATTERN,
        description="Only events with this name; a value that is not an event name (empty, "
                    "blank) is 422.")] = None,
    correlation_key: Annotated[str | None, Query(
        alias="correlationKey",
        description="Only events with this correlation key" + NOT_EMPTY)] = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> s.EventPage:
    page = service_of(request).list_events(name=name, correlation_key=correlation_key,
                                           limit=limit, cursor=cursor)
    return s.EventPage(items=[s.Event.of(e) for e in page.items],
                       next_cursor=page.next_cursor)


@router.get("/events/{event_id}", responses=NOT_FOUND, tags=["events"], summary="Get an event")
def get_event(event_id: str, request: Request) -> s.Event:
    return s.Event.of(service_of(request).get_event(event_id))


# -- state --------------------------------------------------------------------------------
# Keys may hold any character, "/" included: they travel percent-encoded in the
# path. Operations that are not plain reads, writes or deletes of one key (an
# increment, an owner's acquire, extend and release) take the key in the body
# instead, so no key can be mistaken for an action: DELETE /v1/locks/acquire
# breaks the lock on the key "acquire".



class _AnyText(Convertor[str]):
    """Like ``path``, but newlines too: a state key may hold any character."""

    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("text", _AnyText())

StateKey = Annotated[str, Path(description="The state key, percent-encoded.", min_length=1,
                                max_length=LONGEST_KEY), AfterValidator(s.check_state_key)]


#: Only keys after this one: a listing's next page (of state keys or locks).
After = Annotated[str | None, Query(
    description="Only keys after this one: the previous page's `nextCursor` (its last "
    "key).")]


@router.get("/state", tags=["state"], summary="List live state keys")
def list_state(
    request: Request,
    prefix: str | None = None,
    limit: Limit = 100,
    after: After = None,
) -> s.StateList:
    page = service_of(request).state_page(prefix, limit, after)
    return s.StateList(items=[
        s.StateEntry(key=e["key"], value=e["value"], expires_at=to_datetime(e["expires_at"]),
                     updated_at=to_datetime(e["updated_at"]))  # type: ignore[arg-type]
        for e in page.items
    ], next_cursor=page.next_cursor)


@router.post("/state/increment", tags=["state"], summary="Add to a counter atomically")
def increment_state(body: s.IncrementState, request: Request) -> s.StateValue:
    value = service_of(request).state_increment(body.key, body.by)
    return s.StateValue(key=body.key, value=value)


@router.post("/locks/acquire", tags=["state"], summary="Try to take a lock")
def acquire_lock(body: s.AcquireLock, request: Request) -> s.LockResult:
    held = service_of(request).lock_acquire(body.key, body.owner, body.ttl, body.holder)
    return s.LockResult(key=body.key, held=held)


@router.get("/limits", tags=["server"], summary="The server's limits on values and keys")
def get_limits(request: Request) -> s.Limits:
    return s.Limits.of(service_of(request).settings)


@router.post("/locks/extend", tags=["state"], summary="Extend one's own lock")
def extend_lock(body: s.ExtendLock, request: Request) -> s.LockResult:
    held = service_of(request).lock_extend(body.key, body.owner, body.ttl)
    return s.LockResult(key=body.key, held=held)


@router.post("/locks/release", tags=["state"], summary="Release one's own lock")
def release_lock(body: s.ReleaseLock, request: Request) -> s.LockReleased:
    lost = service_of(request).lock_release(body.key, body.owner)
    return s.LockReleased(key=body.key, held=lost is None, lost=lost)


@router.get(
    "/state/{key:text}",
    responses={404: {"model": ErrorResponse, "description": "No live value under the key."}},
    tags=["state"],
    summary="Read a value",
)
def get_state(key: StateKey, request: Request) -> s.StateValue:
    found, value = service_of(request).state_get(key)
    if not found:
        raise ApiError(404, "state_key_not_found", f"no live value under state key {key!r}")
    return s.StateValue(key=key, value=value)


@router.put("/state/{key:text}", status_code=204, tags=["state"], summary="Write a value")
def set_state(key: StateKey, body: s.SetState, request: Request) -> Response:
    service_of(request).state_set(key, body.value, ttl=body.ttl, expires_at=body.expires_at)
    return Response(status_code=204)


@router.delete("/state/{key:text}", tags=["state"], summary="Delete a value")
def delete_state(key: StateKey, request: Request) -> s.StateDeleted:
    return s.StateDeleted(key=key, deleted=service_of(request).state_delete(key))


@router.get("/locks", tags=["state"], summary="List live locks")
def list_locks(
    request: Request,
    prefix: str | None = None,
    limit: Limit = 100,
    after: After = None,
) -> s.LockList:
    page = service_of(request).lock_page(prefix, limit, after)
    return s.LockList(items=[
        s.LockEntry(key=e["key"], holder=e["holder"],
                    expires_at=to_datetime(e["expires_at"]))  # type: ignore[arg-type]
        for e in page.items
    ], next_cursor=page.next_cursor)


@router.delete("/locks/{key:text}", tags=["state"], summary="Break a lock, whatever its owner")
def break_lock(key: StateKey, request: Request) -> s.LockBroken:
    return s.LockBroken(key=key, broken=service_of(request).lock_break(key))
