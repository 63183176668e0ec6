"""``/v1/endpoints``: register the handler routes the server invokes (push mode).

An application registers its route with the jobs it serves (``stackshift
endpoints add URL --jobs ...``, or at start-up through this API) and gets the
secret that signs the server's requests to it. ``/v1/worker/push/accept`` is
the route's one extra call: it accepts a delivery once, before running anything.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from . import push_schemas as p
from .bodies import JsonBodyRoute
from .routes import ERRORS, NOT_FOUND, service_of

router = APIRouter(prefix="/v1", responses=ERRORS, route_class=JsonBodyRoute)

EndpointId = Annotated[str, Path(description="An endpoint id (`ep_...`).")]


@router.post("/endpoints", status_code=201, tags=["push endpoints"],
             responses={200: {"model": p.Endpoint, "description": "The URL was registered"
                              " before: it keeps its id and secret and now serves these"
                              " jobs, with these rules."}},
             summary="Register a handler route, or update what it serves")
def register_endpoint(body: p.RegisterEndpoint, request: Request,
                      response: Response) -> p.Endpoint:
    """Returns the endpoint with its signing secret. Registering the same URL again
    keeps its id and secret, so an application may register at every start."""
    registered = service_of(request).register_endpoint(
        body.url, list(body.jobs), concurrency=body.concurrency,
        key_limits=dict(body.key_limits), on_failure=dict(body.on_failure))
    response.status_code = 201 if registered.created else 200
    return p.Endpoint.of(registered)


@router.get("/endpoints", tags=["push endpoints"], summary="List handler routes (no secrets)")
def list_endpoints(request: Request) -> p.EndpointList:
    return p.EndpointList(items=[p.Endpoint.of(e) for e in service_of(request).list_endpoints()])


@router.delete("/endpoints/{endpoint_id}", tags=["push endpoints"], responses=NOT_FOUND,
               summary="Stop invoking a handler route")
def remove_endpoint(endpoint_id: EndpointId, request: Request) -> p.Endpoint:
    return p.Endpoint.of(service_of(request).remove_endpoint(endpoint_id))


@router.post("/worker/push/accept", tags=["push endpoints"],
             summary="Accept a signed delivery before executing it (once)")
def accept_delivery(body: p.AcceptDelivery, request: Request) -> p.Accepted:
    """`accepted` is true the first time only: a replayed delivery gets false."""
    lease = body.lease.to_lease()
    return p.Accepted(accepted=service_of(request).accept_push_delivery(
        body.delivery_id, lease.run_id, lease.attempt))
