"""The API as a server from an earlier version serves it: the real app over the
database in ``STACKSHIFT_DATABASE_URL``, without ``GET /v1/limits`` and ``GET
/v1/jobs``, and with ``POST /v1/locks/acquire`` taking the body it took before
lock holders (a ``holder`` field is refused as unknown, as any unknown field is).

Served by uvicorn in ``test_older_server.py`` (its own process: the routes are
changed in the module's router before the app is built).
"""

from __future__ import annotations

import os

from fastapi import Request

from stackshift.server import flow_routes, routes
from stackshift.server import schemas as s
from stackshift.server.app import app_from_url
from stackshift.server.routes import service_of

routes.router.routes[:] = [route for route in routes.router.routes
                           if getattr(route, "path", None) not in ("/v1/limits",
                                                                   "/v1/locks/acquire")]
flow_routes.router.routes[:] = [route for route in flow_routes.router.routes
                                if getattr(route, "path", None) != "/v1/jobs"]


class AcquireLock(s.Body):
    key: s.StateKey
    owner: s.Owner
    ttl: s.PositiveDuration


@routes.router.post("/locks/acquire", tags=["state"])
def acquire_lock(body: AcquireLock, request: Request) -> s.LockResult:
    held = service_of(request).lock_acquire(body.key, body.owner, body.ttl)
    return s.LockResult(key=body.key, held=held)


app = app_from_url(os.environ["STACKSHIFT_DATABASE_URL"], migrate=False)
