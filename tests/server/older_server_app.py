"""The API as a server from an earlier version serves it: the real app over the
database in ``STACKSHIFT_DATABASE_URL``, without ``GET /v1/limits``, ``GET
/v1/jobs``, ``POST /v1/runs/many`` and ``POST /v1/runs/{run_id}/again``, with
``POST /v1/locks/acquire`` taking the body it took before lock holders (a
``holder`` field is refused as unknown, as any unknown field is), with ``POST
/v1/runs/retry-many`` as before pages (no ``cursor``, no ``nextCursor``), with
``GET /v1/runs/{run_id}/logs`` as before pages (no ``limit``), and with ``POST
/v1/worker/renew`` as before it took log records (``POST /v1/worker/register``
answering without ``renewTakesLogs``), and with log records as before they had
fields (a ``fields`` in one refused, and ``logsTakeFields`` not in that answer).

Served by uvicorn in ``test_older_server.py`` (its own process: the routes are
changed in the module's router before the app is built).
"""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from pydantic import Field, StrictInt, StrictStr

from stackshift.server import flow_routes, routes, worker_routes
from stackshift.server import schemas as s
from stackshift.server import worker_schemas as w
from stackshift.server.app import app_from_url
from stackshift.server.routes import service_of

routes.router.routes[:] = [route for route in routes.router.routes
                           if getattr(route, "path", None) not in (
                               "/v1/limits", "/v1/locks/acquire", "/v1/runs/{run_id}/logs",
                               "/v1/runs/many", "/v1/runs/{run_id}/again")]
flow_routes.router.routes[:] = [route for route in flow_routes.router.routes
                                if getattr(route, "path", None) not in ("/v1/jobs",
                                                                        "/v1/runs/retry-many")]

worker_routes.router.routes[:] = [
    route for route in worker_routes.router.routes
    if getattr(route, "path", None) not in ("/v1/worker/register", "/v1/worker/renew")]


class AcquireLock(s.Body):
    key: s.StateKey
    owner: s.Owner
    ttl: s.PositiveDuration


@routes.router.post("/locks/acquire", tags=["state"])
def acquire_lock(body: AcquireLock, request: Request) -> s.LockResult:
    held = service_of(request).lock_acquire(body.key, body.owner, body.ttl)
    return s.LockResult(key=body.key, held=held)


@routes.router.get("/runs/{run_id}/logs", tags=["runs"])
def run_logs(run_id: routes.RunId, request: Request,
             after: Annotated[int | None, Query(ge=0, lt=2 ** 63)] = None) -> s.LogList:
    items = service_of(request).logs(run_id, after)
    return s.LogList(items=[s.LogEntry.of(e) for e in items])


class OlderRetryMany(s.Body):
    queue_name: s.Name | None = None
    job: s.Name | None = None
    status: StrictStr = "failed"
    created_after: s.Time | None = None
    created_before: s.Time | None = None
    limit: Annotated[StrictInt, Field(ge=1)] | None = None


class OlderRetried(s.Wire):
    retried: list[str]
    count: int


@flow_routes.router.post("/runs/retry-many", tags=["runs"])
def retry_many(body: OlderRetryMany, request: Request) -> OlderRetried:
    retried = service_of(request).retry_many(
        queue=body.queue_name, job=body.job, status=body.status,
        created_after=body.created_after, created_before=body.created_before, limit=body.limit,
        page_size=100_000)
    return OlderRetried(retried=retried, count=len(retried))


@worker_routes.router.post("/register")
def register_worker(body: w.RegisterWorker, request: Request) -> w.Done:
    worker_routes.register_worker(body, request)
    return w.Done()


class OlderRenewLeases(s.Body):
    leases: list[w.LeaseBody]
    lease_seconds: w.LeaseSeconds


@worker_routes.router.post("/renew")
def renew_leases(body: OlderRenewLeases, request: Request) -> w.Renewed:
    return worker_routes.renew_leases(
        w.RenewLeases.model_validate(body.model_dump(by_alias=True)), request)


app = app_from_url(os.environ["STACKSHIFT_DATABASE_URL"], migrate=False)


def _log_with_fields(value: Any) -> bool:
    if isinstance(value, dict):
        return ({"level", "logger", "fields"} <= value.keys()
                or any(_log_with_fields(item) for item in value.values()))
    return isinstance(value, list) and any(_log_with_fields(item) for item in value)


@app.middleware("http")
async def refuse_log_fields(request: Request, call_next: Any) -> Any:
    """A log record's ``fields`` is refused as unknown, as any unknown field is."""
    if request.url.path.startswith("/v1/worker/"):
        body = await request.body()
        if body and _log_with_fields(json.loads(body)):
            return JSONResponse({"error": {
                "code": "validation_error",
                "message": "logs.0.fields: Extra inputs are not permitted"}}, status_code=422)
    return await call_next(request)
