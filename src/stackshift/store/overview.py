"""Operational read models: queue statistics, throughput, jobs, workers, consumers.

These reads serve the dashboard and operators. Each is one short read
transaction on index-backed or grouped queries; none of them takes a lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..durations import to_datetime
from ..models import EventConsumer, JobStats, QueueStats, ThroughputBucket, WorkerInfo
from .database import Database


class OverviewStore:
    db: Database

    def job_names(self) -> list[str]:
        with self.db.read() as tx:
            return [r["job"] for r in tx.all("job_names")]

    def queue_names(self) -> list[str]:
        with self.db.read() as tx:
            return [r["queue"] for r in tx.all("queue_names")]

    def queue_stats(self, now: float) -> list[QueueStats]:
        """Every queue that holds runs: counts per status and since when its oldest
        run due at ``now`` and not yet started has been due (as in ``queue_info``)."""
        with self.db.read() as tx:
            counts = tx.all("count_runs_by_queue_status")
            oldest = {r["queue"]: r["oldest"]
                      for r in tx.all("oldest_ready_by_queue", now=now)}
        by_queue: dict[str, dict[str, int]] = {}
        for r in counts:
            by_queue.setdefault(r["queue"], {})[r["status"]] = int(r["n"])
        return [
            QueueStats(name, by_queue[name], to_datetime(oldest.get(name)))
            for name in sorted(by_queue)
        ]

    def throughput(
        self, since: int, bucket: int, buckets: int, queue: str | None = None
    ) -> dict[str, list[ThroughputBucket]]:
        """Finished runs per time bucket since ``since``, per queue (all queues if None).

        ``since`` and ``bucket`` are whole seconds; every queue gets ``buckets``
        entries, empty ones included, oldest first.
        """
        with self.db.read() as tx:
            if queue is None:
                found = tx.all("throughput_by_queue", since=since, bucket=bucket)
            else:
                found = tx.all("throughput_of_queue", since=since, bucket=bucket, queue=queue)
        grid: dict[str, list[list[int]]] = {}
        for r in found:
            slot = int(r["slot"])
            if not 0 <= slot < buckets:
                continue
            cells = grid.setdefault(r["queue"], [[0, 0] for _ in range(buckets)])
            cells[slot][0 if r["status"] == "completed" else 1] += int(r["n"])
        if queue is not None:
            grid.setdefault(queue, [[0, 0] for _ in range(buckets)])
        return {
            name: [
                ThroughputBucket(to_datetime(since + i * bucket), done, failed)  # type: ignore[arg-type]
                for i, (done, failed) in enumerate(cells)
            ]
            for name, cells in grid.items()
        }

    def job_stats(self, now: float) -> list[JobStats]:
        """Every job that has runs: counts per status, when it was last started, and
        how many of its runs a worker could claim at ``now`` (with the earliest due
        time of those waiting, due or not)."""
        with self.db.read() as tx:
            found = tx.all("count_runs_by_job_status")
            due = {r["job"]: (int(r["due"] or 0), r["next_due"])
                   for r in tx.all("due_runs_by_job", now=now)}
        counts: dict[str, dict[str, int]] = {}
        last: dict[str, float] = {}
        for r in found:
            counts.setdefault(r["job"], {})[r["status"]] = int(r["n"])
            last[r["job"]] = max(last.get(r["job"], 0.0), float(r["last_created"]))
        return [
            JobStats(name, counts[name], to_datetime(last[name]),
                     due=due.get(name, (0, None))[0],
                     next_due_at=to_datetime(due.get(name, (0, None))[1]))
            for name in sorted(counts)
        ]

    def published_jobs(self) -> list[tuple[str, str | None, int | None, datetime]]:
        """Each job some worker has published, by name: ``(name, queue,
        max_attempts, when it last did)``."""
        with self.db.read() as tx:
            found = tx.all("list_jobs")
        return [(r["name"], r["queue"],
                 None if r["max_attempts"] is None else int(r["max_attempts"]),
                 to_datetime(r["updated_at"])) for r in found]  # type: ignore[misc]

    def workers(self) -> list[WorkerInfo]:
        with self.db.read() as tx:
            found = tx.all("list_workers")
        return [
            WorkerInfo(
                id=r["id"],
                hostname=r["hostname"],
                pid=int(r["pid"]),
                jobs=json.loads(r["jobs"]),
                queues=json.loads(r["queues"]) if r["queues"] else None,
                concurrency=int(r["concurrency"]),
                started_at=to_datetime(r["started_at"]),  # type: ignore[arg-type]
                heartbeat_at=to_datetime(r["heartbeat_at"]),  # type: ignore[arg-type]
            )
            for r in found
        ]

    def event_consumers(self, event_ids: Sequence[str]) -> dict[str, list[EventConsumer]]:
        """The runs that took each of ``event_ids``, in the order they took it."""
        if not event_ids:
            return {}
        names = [f"e{i}" for i in range(len(event_ids))]
        params: dict[str, Any] = dict(zip(names, event_ids, strict=True))
        # Built from fixed fragments only; the ids are parameters.
        sql = (
            "SELECT event_id, run_id, step_key, at FROM event_consumptions WHERE event_id IN ("
            + ", ".join(f":{n}" for n in names)
            + ") ORDER BY at"
        )
        with self.db.read() as tx:
            found = tx.raw(sql, params)
        out: dict[str, list[EventConsumer]] = {}
        for r in found:
            out.setdefault(r["event_id"], []).append(
                EventConsumer(r["event_id"], r["run_id"], r["step_key"],
                              to_datetime(r["at"]))  # type: ignore[arg-type]
            )
        return out

    def change_marker(self) -> str:
        """A value that changes whenever a run, event or worker registration changes.

        Every run transition, step and event taken writes a timeline entry, so the
        newest timeline and log ids cover runs; events and workers are added.
        PostgreSQL adds the transactions still in flight (see its query).
        """
        with self.db.read() as tx:
            row = tx.one("change_marker")
        if row is None:
            return ""
        values = dict(row)  # SQLite's rows test membership against values, not keys
        parts = ("timeline", "logs", "events", "workers", "joined", "in_flight")
        return ":".join(str(values[k]) for k in parts if k in values)
