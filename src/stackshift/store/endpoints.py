"""Push mode: the endpoints the server invokes, and the deliveries it signs.

An endpoint is an application's handler route with the jobs it serves and the
secret that signs requests to it. A delivery is one such request; the route
accepts it once, through :meth:`EndpointStore.accept_push_delivery`, so a
captured request sent again executes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from ..durations import to_datetime
from ..models import Endpoint
from .database import Database, Row


def endpoint(row: Row, *, with_secret: bool = False) -> Endpoint:
    rules = json.loads(row["rules"])
    return Endpoint(
        id=row["id"],
        url=row["url"],
        jobs=list(json.loads(row["jobs"])),
        concurrency=int(row["concurrency"]),
        created_at=to_datetime(row["created_at"]),  # type: ignore[arg-type]
        updated_at=to_datetime(row["updated_at"]),  # type: ignore[arg-type]
        key_limits=dict(rules.get("keyLimits", {})),
        on_failure=dict(rules.get("onFailure", {})),
        secret=row["secret"] if with_secret else None,
    )


class EndpointStore:
    db: Database

    def upsert_endpoint(self, endpoint_id: str, url: str, secret: str, jobs: Sequence[str],
                        key_limits: Mapping[str, int], on_failure: Mapping[str, str],
                        concurrency: int, now: float) -> Endpoint:
        """Register ``url``, or update what it serves; returned with its secret.

        ``endpoint_id`` and ``secret`` are used only when ``url`` is new.
        """
        rules = json.dumps({"keyLimits": dict(key_limits), "onFailure": dict(on_failure)},
                           sort_keys=True)
        with self.db.write() as tx:
            tx.run("upsert_endpoint", id=endpoint_id, url=url, secret=secret,
                   jobs=json.dumps(sorted(set(jobs))), rules=rules, concurrency=concurrency,
                   now=now)
            row = tx.one("endpoint_by_url", url=url)
        assert row is not None
        return endpoint(row, with_secret=True)

    def list_endpoints(self, *, with_secrets: bool = False) -> list[Endpoint]:
        with self.db.read() as tx:
            return [endpoint(r, with_secret=with_secrets) for r in tx.all("list_endpoints")]

    def delete_endpoint(self, endpoint_id: str) -> Endpoint | None:
        with self.db.write() as tx:
            row = tx.one("delete_endpoint", id=endpoint_id)
        return None if row is None else endpoint(row)

    def insert_push_delivery(self, delivery_id: str, endpoint_id: str, run_id: str,
                             attempt: int, now: float) -> None:
        with self.db.write() as tx:
            tx.run("insert_push_delivery", id=delivery_id, endpoint_id=endpoint_id,
                   run_id=run_id, attempt=attempt, now=now)

    def accept_push_delivery(self, delivery_id: str, run_id: str, attempt: int,
                             now: float) -> bool:
        """Whether this is the first acceptance of a delivery of this run and attempt."""
        with self.db.write() as tx:
            row = tx.one("accept_push_delivery", id=delivery_id, now=now)
        return row is not None and row["run_id"] == run_id and int(row["attempt"]) == attempt

    def purge_push_deliveries(self, before: float) -> int:
        with self.db.write() as tx:
            return tx.run("purge_push_deliveries", before=before)
