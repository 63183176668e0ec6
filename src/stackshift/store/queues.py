"""Queue configuration (limits, pause, default attempts), queue statistics, ageing."""

from __future__ import annotations

from typing import Any

from ..engine.limits import RateLimit
from ..errors import QueueNotFoundError
from ..ids import failure_cursor
from ..models import Page, QueueInfo, Run
from . import rows
from .database import Database, Row, Tx

#: ``claim_priority`` of a run that has waited past the starvation limit: above
#: every 32-bit priority, so such runs go first, oldest first.
AGED_PRIORITY = 2**31

#: Sentinel for "leave this setting as it is" in :meth:`QueueStore.configure_queue`.
KEEP: Any = object()


def _check_known(tx: Tx, name: str) -> None:
    """Raise :class:`QueueNotFoundError` unless a list would show queue ``name``."""
    if tx.one("queue_known", name=name) is None:
        raise QueueNotFoundError.named(name, (r["name"] for r in tx.all("all_queue_names")))


def _config(row: Row | None, name: str) -> dict[str, Any]:
    if row is None:
        return {"name": name, "concurrency": None, "rate_limit": None, "max_attempts": None,
                "paused": False}
    return {
        "name": row["name"],
        "concurrency": row["concurrency"],
        "rate_limit": row["rate_limit"],
        "max_attempts": row["max_attempts"],
        "paused": bool(row["paused"]),
    }


class QueueStore:
    db: Database

    def configure_queue(
        self,
        name: str,
        now: float,
        *,
        concurrency: Any = KEEP,
        rate_limit: Any = KEEP,
        max_attempts: Any = KEEP,
        paused: Any = KEEP,
    ) -> dict[str, Any]:
        """Change the given settings of ``name`` (``None`` removes a limit); return all.

        The row is locked while it is changed, so concurrent changes of different
        settings all apply.
        """
        with self.db.write() as tx:
            tx.run("ensure_queue", name=name, now=now)
            row = tx.one("lock_queue", name=name)
            assert row is not None
            values = dict(row)
            if concurrency is not KEEP:
                values["concurrency"] = concurrency
            if rate_limit is not KEEP:
                limit: RateLimit | None = rate_limit
                values["rate_limit"] = None if limit is None else limit.text
                values["rate_count"] = None if limit is None else limit.count
                values["rate_period"] = None if limit is None else limit.period
            if max_attempts is not KEEP:
                values["max_attempts"] = max_attempts
            if paused is not KEEP:
                values["paused"] = 1 if paused else 0
            updated = tx.one(
                "update_queue", name=name, concurrency=values["concurrency"],
                rate_limit=values["rate_limit"], rate_count=values["rate_count"],
                rate_period=values["rate_period"], max_attempts=values["max_attempts"],
                paused=values["paused"], now=now,
            )
            if tx.dialect == "postgres" and not values["paused"]:
                # Resumed, or a limit raised: idle workers of other processes
                # claim now, not at their next poll (SQLite's see the commit).
                tx.one("wake_workers")
        return _config(updated, name)

    def queue_config(self, name: str) -> dict[str, Any]:
        """The stored settings of ``name`` (all unset for a queue never configured)."""
        with self.db.read() as tx:
            return _config(tx.one("get_queue", name=name), name)

    def all_queue_names(self) -> list[str]:
        """Queues that hold runs or have settings, by name."""
        with self.db.read() as tx:
            return [r["name"] for r in tx.all("all_queue_names")]

    def queue_configs(self) -> list[dict[str, Any]]:
        with self.db.read() as tx:
            return [_config(r, r["name"]) for r in tx.all("list_queues")]

    def queue_info(self, name: str, now: float, window: float, *,
                   known: bool = False) -> QueueInfo:
        """Configuration and numbers of one queue, from one consistent snapshot.

        With ``known``, a queue no list shows (no runs, no settings) raises
        :class:`QueueNotFoundError`; without, it has zero counts.
        """
        with self.db.read() as tx:
            if known:
                _check_known(tx, name)
            config = _config(tx.one("get_queue", name=name), name)
            counts = {r["status"]: int(r["n"]) for r in tx.all("queue_status_counts", queue=name)}
            finished = {r["status"]: int(r["n"])
                        for r in tx.all("queue_finished_since", queue=name, since=now - window)}
            oldest = tx.one("queue_oldest_ready", queue=name, now=now)
        done, failed = finished.get("completed", 0), finished.get("failed", 0)
        oldest_at = oldest["oldest"] if oldest else None
        return QueueInfo(
            name=name,
            concurrency=config["concurrency"],
            rate_limit=config["rate_limit"],
            max_attempts=config["max_attempts"],
            paused=config["paused"],
            counts=counts,
            window=window,
            completed_in_window=done,
            failed_in_window=failed,
            throughput=(done + failed) * 60.0 / window if window > 0 else 0.0,
            failure_rate=failed / (done + failed) if done + failed else None,
            oldest_queued_age=None if oldest_at is None else max(0.0, now - float(oldest_at)),
        )

    def dead_letters(self, queue: str, job: str | None, limit: int,
                     after: tuple[float, str] | None) -> Page[Run]:
        """Failed runs of ``queue`` (of ``job``), the latest failure first, after the
        ``(finished_at, id)`` of the previous page's last run. A queue no list shows
        raises :class:`QueueNotFoundError`."""
        where = ["status = 'failed'", "queue = :queue"]
        params: dict[str, Any] = {"queue": queue, "limit": limit + 1}
        if job is not None:
            where.append("job = :job")
            params["job"] = job
        if after is not None:
            where.append("(finished_at, id) < (:at, :id)")
            params["at"], params["id"] = after
        sql = (f"SELECT * FROM runs WHERE {' AND '.join(where)}"
               " ORDER BY finished_at DESC, id DESC LIMIT :limit")
        with self.db.read() as tx:
            found = tx.raw(sql, params)
            if not found:  # an empty page, or the end of a known queue's list
                _check_known(tx, queue)
        items = [rows.run(r) for r in found[:limit]]
        last = found[limit - 1] if len(found) > limit else None
        return Page(items, None if last is None else failure_cursor(last["finished_at"],
                                                                     last["id"]))

    def age_ready_runs(self, before: float) -> int:
        """Runs ready since before ``before`` now claim ahead of every priority."""
        with self.db.write() as tx:
            return tx.run("age_ready_runs", before=before)
