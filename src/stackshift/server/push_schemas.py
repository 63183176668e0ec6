"""The JSON shapes of push mode: endpoint registration and the signed deliveries.

``/v1/endpoints`` registers an application's handler route; a delivery is the
body the server signs and posts to that route to execute one run's attempt.
Like :mod:`.schemas`, this module needs pydantic only: applications import it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StrictInt, StrictStr

from .. import models as m
from . import worker_schemas as w
from .schemas import Body, KeyConcurrency, Name, Wire

Url = Annotated[StrictStr, Field(min_length=1, max_length=2000,
                                 examples=["https://app.example.com/api/stackshift"])]
DeliveryId = Annotated[w.Column, Field(min_length=1, max_length=200)]


class RegisterEndpoint(Body):
    url: Url
    jobs: Annotated[list[Name], Field(min_length=1, max_length=10_000)]
    concurrency: Annotated[StrictInt, Field(ge=1, le=1000)] = 10
    key_limits: dict[Name, KeyConcurrency] = Field(
        default_factory=dict, description="Per-job concurrency-key limits of the application.")
    on_failure: dict[Name, w.FailureHandler] = Field(
        default_factory=dict, description="Per-job failure handlers of the application.")


class Endpoint(Wire):
    id: str
    url: str
    jobs: list[str]
    concurrency: int
    created_at: datetime
    updated_at: datetime
    secret: str | None = Field(
        default=None, description="Signs the requests to the route; returned on registration "
                                  "only.")

    @classmethod
    def of(cls, e: m.Endpoint) -> Endpoint:
        return cls(id=e.id, url=e.url, jobs=e.jobs, concurrency=e.concurrency,
                   created_at=e.created_at, updated_at=e.updated_at, secret=e.secret)

    def to_model(self) -> m.Endpoint:
        return m.Endpoint(id=self.id, url=self.url, jobs=list(self.jobs),
                          concurrency=self.concurrency, created_at=self.created_at,
                          updated_at=self.updated_at, secret=self.secret)


class EndpointList(Wire):
    items: list[Endpoint]


class AcceptDelivery(Body):
    delivery_id: DeliveryId
    lease: w.LeaseBody


class Accepted(Wire):
    accepted: bool


class Delivery(Wire):
    """What the server posts, signed, to a handler route: one attempt of one run."""

    delivery_id: str
    endpoint_id: str
    worker_id: str = Field(description="Holds the run's lease; the route checkpoints as it.")
    lease_seconds: float
    claimed: w.ClaimedRun
    logs_take_fields: bool = Field(False, description=(
        "The server takes log records with `fields` (see `POST /v1/worker/register`)."
        " A server from an earlier version leaves it out: the route then puts a record's"
        " fields at the end of its message."))
