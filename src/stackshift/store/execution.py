"""What workers do to runs: claim, checkpoint steps, finish, suspend, keep leases.

Every write by a worker is conditional on its lease (owner and attempt), so a
worker that lost its run (lease expired and rescued) can never overwrite what
the new owner does; it gets :class:`LeaseLost` and abandons the invocation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..engine.transitions import Status
from ..errors import LeaseLost
from ..serialization import dumps
from . import rows
from .base import ClaimedRun, ExpiredLease, Lease, LogWrite, Outcome, StepWrite
from .database import Database, Row, Tx
from .flow import NO_RULES, ClaimRules, choose_runs
from .groupcommit import GroupCommit, group_commit_of
from .runs import add_timeline, move_run, start_failure_handler, waiting_data

#: "No expiry condition" for finishing a run with a live lease.
NO_DEADLINE = 1e300


def write_logs(tx: Tx, run_id: str, logs: Sequence[LogWrite]) -> None:
    for log in logs:
        tx.run(
            "insert_log",
            run_id=run_id,
            attempt=log.attempt,
            step=log.step,
            at=log.at,
            level=log.level,
            # PostgreSQL text cannot hold NUL; a log line must never fail its step.
            logger=log.logger.replace("\x00", "\ufffd"),
            message=log.message.replace("\x00", "\ufffd"),
        )


def _finish_recorded(tx: Tx, endings: list[Any]) -> list[bool]:
    """Completed and cancelled endings, each one ``finish_leased_run_recorded``.

    ``endings`` holds ``(lease, outcome, logs, now, expired_before)``; the
    result says, for each, whether the lease was still held (and the run ended).
    """
    params = [
        {"id": lease.run_id, "worker_id": lease.worker_id, "attempt": lease.attempt,
         "expired_before": expired_before, "status": outcome.status, "result": outcome.result,
         "error": dumps(outcome.error) if outcome.error else None, "finished_at": now,
         "available_at": outcome.retry_at, "now": now, "attempt_status": outcome.status,
         "kind": f"run.{outcome.status}", "data": dumps({"from": "running"})}
        for lease, outcome, _, now, expired_before in endings
    ]
    moved = tx.many_returning("finish_leased_run_recorded", params)
    for (lease, _, logs, _, _), row in zip(endings, moved, strict=True):
        if row is not None:
            write_logs(tx, lease.run_id, logs)
    return [row is not None for row in moved]


def write_step(tx: Tx, run_id: str, attempt: int, step: StepWrite) -> None:
    tx.run(
        "upsert_step",
        run_id=run_id,
        key=step.key,
        name=step.name,
        kind=step.kind,
        function=step.function,
        status=step.status,
        result=step.result,
        error=dumps(step.error) if step.error else None,
        attempt=attempt,
        started_at=step.started_at,
        finished_at=step.finished_at,
    )


def renew(tx: Tx, lease: Lease, now: float, lease_seconds: float) -> bool:
    """Check and extend ``lease``; return whether a cancel was requested."""
    row = tx.one(
        "renew_lease",
        id=lease.run_id,
        worker_id=lease.worker_id,
        attempt=lease.attempt,
        lease_expires_at=now + lease_seconds,
        now=now,
    )
    if row is None:
        raise LeaseLost(lease.run_id)
    return bool(row["cancel_requested"])


class _ClaimRecords:
    """Attempt rows and timeline entries of a claim, written together at its end.

    The claim's other queries (flow control counts) read only ``runs``, so these
    rows can wait for one batched statement each instead of one per run.
    """

    def __init__(self) -> None:
        self.started: list[dict[str, Any]] = []
        self.resumed: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []

    def timeline(self, run_id: str, kind: str, at: float, attempt: int | None,
                 data: dict[str, Any] | None) -> None:
        self.entries.append({"run_id": run_id, "at": at, "kind": kind, "attempt": attempt,
                             "step": None, "data": dumps(data) if data else None})

    def write(self, tx: Tx) -> None:
        if self.started:
            tx.many("insert_attempt", self.started)
        if self.resumed:
            tx.many("set_attempt_status", self.resumed)
        if self.entries:
            tx.many("insert_timeline", self.entries)


class _Flushing:
    """The claim's transaction as flow control sees it.

    ``choose_runs`` hands each chosen run to a callback that must have moved it
    to ``running`` before the transaction's next query (so that flow-control
    counts include it). The callback only collects runs; this wrapper moves the
    collected ones, in one statement, before any query runs, and the claim
    moves the rest at its end.
    """

    def __init__(self, tx: Tx, flush: Callable[[], None]) -> None:
        self._tx = tx
        self._flush = flush
        self.dialect = tx.dialect

    def one(self, query: str, **params: Any) -> Row | None:
        self._flush()
        return self._tx.one(query, **params)

    def all(self, query: str, **params: Any) -> list[Row]:
        self._flush()
        return self._tx.all(query, **params)

    def run(self, query: str, **params: Any) -> int:
        self._flush()
        return self._tx.run(query, **params)

    def many(self, query: str, params: Sequence[Mapping[str, Any]]) -> None:
        self._flush()
        self._tx.many(query, params)

    def many_returning(self, query: str, params: Sequence[Mapping[str, Any]]
                       ) -> list[Row | None]:
        self._flush()
        return self._tx.many_returning(query, params)

    def raw(self, sql: str, params: Mapping[str, Any]) -> list[Row]:
        self._flush()
        return self._tx.raw(sql, params)

    def lock(self, key: str) -> None:
        self._flush()
        self._tx.lock(key)

    def is_data_error(self, exc: BaseException) -> bool:
        return self._tx.is_data_error(exc)


class ExecutionStore:
    db: Database

    @property
    def group_commit(self) -> GroupCommit:
        """This process's shared transactions for claims, checkpoints and endings."""
        return group_commit_of(self)

    def claim_runs(
        self,
        worker_id: str,
        jobs: Sequence[str],
        limit: int,
        lease_seconds: float,
        now: float,
        queues: Sequence[str] | None = None,
        rules: ClaimRules = NO_RULES,
    ) -> list[ClaimedRun]:
        """Lease up to ``limit`` due runs of ``jobs``, highest priority, then oldest, first.

        With ``queues``, only runs in those queues. Paused queues, queue
        concurrency and rate limits, and the ``key_concurrency`` of jobs in
        ``rules`` are respected (see :mod:`stackshift.store.flow`); runs ready
        for longer than the starvation limit come before any priority.
        """
        if limit <= 0 or not jobs or (queues is not None and not queues):
            return []

        def work(tx: Tx) -> list[ClaimedRun]:
            chosen: list[Row] = []
            claimed: list[ClaimedRun] = []

            def flush() -> None:
                if chosen:
                    batch = list(chosen)
                    chosen.clear()
                    claimed.extend(self._claim_batch(tx, batch, worker_id, lease_seconds, now,
                                                     rules))

            choose_runs(_Flushing(tx, flush), jobs, queues, limit, now, rules.key_limits,
                        chosen.append)
            flush()
            return claimed

        # A worker's claim shares a transaction with the endings of its runs (it
        # claims as soon as a handler returns), but goes first: capacity those
        # endings free in a limited queue is then seen by every worker at once,
        # instead of passing straight to the worker that held it.
        return self.group_commit.run(work, first=True)

    def _claim_batch(self, tx: Tx, cands: list[Row], worker_id: str, lease_seconds: float,
                     now: float, rules: ClaimRules) -> list[ClaimedRun]:
        """Move the chosen runs to ``running`` (one statement) and start their attempts."""
        later = _ClaimRecords()
        by_handler: dict[str | None, list[str]] = {}
        for cand in cands:
            if cand["status"] != Status.QUEUED:
                later.timeline(cand["id"], "run.queued", cand["available_at"], None,
                               {"from": cand["status"]})
            by_handler.setdefault(rules.on_failure.get(cand["job"]), []).append(cand["id"])
        moved: dict[str, Row] = {}
        for on_failure, ids in by_handler.items():
            for row in tx.all("claim_update_many", ids=ids if tx.dialect == "postgres"
                              else json.dumps(ids), worker_id=worker_id,
                              lease_expires_at=now + lease_seconds, on_failure=on_failure,
                              now=now):
                moved[row["id"]] = row
        claimed = []
        for cand in cands:
            row = moved[cand["id"]]
            resuming = bool(cand["resuming"])
            attempt = row["attempt"]
            if resuming:
                later.resumed.append({"run_id": row["id"], "number": attempt,
                                      "status": "running", "worker_id": worker_id})
                later.timeline(row["id"], "run.resumed", now, attempt, None)
            else:
                later.started.append({"run_id": row["id"], "number": attempt,
                                      "worker_id": worker_id, "now": now})
                later.timeline(row["id"], "attempt.started", now, attempt,
                               {"worker": worker_id})
            steps = {}
            # A first attempt that is not resuming has no steps yet: skip the read.
            if resuming or attempt > 1:
                steps = {
                    s["key"]: rows.step(s)
                    for s in tx.all("completed_steps", run_id=row["id"])
                }
            claimed.append(ClaimedRun(
                run=rows.run(row),
                lease=Lease(row["id"], worker_id, attempt),
                retry_base=row["retry_base"],
                steps=steps,
                new_attempt=not resuming,
            ))
        later.write(tx)
        return claimed

    def save_step(
        self,
        lease: Lease,
        step: StepWrite,
        logs: Sequence[LogWrite],
        now: float,
        lease_seconds: float,
    ) -> bool:
        """Make a finished step durable (and renew the lease) in one transaction.

        Returns whether a cancel was requested. Raises :class:`LeaseLost` when
        this worker no longer holds the run; then nothing is written.
        """
        def work(tx: Tx) -> bool:
            data: dict[str, Any] = {"duration": (step.finished_at or now) - step.started_at}
            if step.function:
                data["function"] = step.function
            if step.error:
                data["error"] = {"type": step.error["type"], "message": step.error["message"]}
            if tx.dialect == "postgres":  # the same writes, in one round trip
                row = tx.one(
                    "save_step_recorded", run_id=lease.run_id, worker_id=lease.worker_id,
                    attempt=lease.attempt, lease_expires_at=now + lease_seconds, now=now,
                    key=step.key, name=step.name, step_kind=step.kind, function=step.function,
                    status=step.status, result=step.result,
                    error=dumps(step.error) if step.error else None,
                    started_at=step.started_at, finished_at=step.finished_at,
                    timeline_kind=f"step.{step.status}", data=dumps(data),
                )
                if row is None:
                    raise LeaseLost(lease.run_id)
                write_logs(tx, lease.run_id, logs)
                return bool(row["cancel_requested"])
            cancel = renew(tx, lease, now, lease_seconds)
            write_step(tx, lease.run_id, lease.attempt, step)
            add_timeline(
                tx,
                lease.run_id,
                f"step.{step.status}",
                step.started_at,
                attempt=lease.attempt,
                step=step.key,
                **data,
            )
            write_logs(tx, lease.run_id, logs)
            return cancel

        return self.group_commit.run(work)

    def finish_attempt(
        self,
        lease: Lease,
        outcome: Outcome,
        logs: Sequence[LogWrite],
        now: float,
        *,
        expired_before: float = NO_DEADLINE,
    ) -> bool:
        """End the leased attempt as ``outcome`` says. False if the lease was lost."""
        status = Status(outcome.status)
        terminal = status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

        if self.db.dialect == "postgres" and status in (Status.COMPLETED, Status.CANCELLED):
            # The same writes as below, in one statement; endings that share a
            # transaction go as one pipelined batch (one round trip for all).
            return bool(self.group_commit.run_combined(
                _finish_recorded, (lease, outcome, logs, now, expired_before)))

        def work(tx: Tx) -> bool:
            moved = tx.one(
                "finish_leased_run",
                id=lease.run_id,
                worker_id=lease.worker_id,
                attempt=lease.attempt,
                expired_before=expired_before,
                status=status.value,
                result=outcome.result,
                error=dumps(outcome.error) if outcome.error else None,
                finished_at=now if terminal else None,
                available_at=outcome.retry_at,
                now=now,
            )
            if moved is None:
                return False
            attempt_status = "failed" if status == Status.RETRYING else status.value
            tx.run(
                "update_attempt",
                run_id=lease.run_id,
                number=lease.attempt,
                status=attempt_status,
                finished_at=now,
                error=dumps(outcome.error) if outcome.error else None,
            )
            write_logs(tx, lease.run_id, logs)
            error = outcome.error or {}
            if status in (Status.FAILED, Status.RETRYING):
                add_timeline(
                    tx,
                    lease.run_id,
                    "attempt.failed",
                    now,
                    attempt=lease.attempt,
                    error={"type": error.get("type"), "message": error.get("message")},
                )
            extra: dict[str, Any] = {"from": "running"}
            if outcome.retry_at is not None:
                extra["next_attempt_at"] = outcome.retry_at
            add_timeline(tx, lease.run_id, f"run.{status.value}", now, attempt=lease.attempt,
                         data=extra)
            if status == Status.FAILED:
                start_failure_handler(tx, moved, outcome.error, now)
            return True

        return self.group_commit.run(work)

    def suspend_for_sleep(
        self, lease: Lease, step: StepWrite, until: float, logs: Sequence[LogWrite], now: float
    ) -> None:
        """Park the run until ``until``; it holds no worker slot meanwhile."""
        with self.db.write() as tx:
            waiting = {"kind": "sleep", "step": step.key, "until": until}
            self._suspend(tx, lease, step, waiting, until, now)
            add_timeline(tx, lease.run_id, "run.waiting", now, attempt=lease.attempt,
                         step=step.key,
                         data={"from": "running", **waiting_data(waiting)})
            write_logs(tx, lease.run_id, logs)

    def _suspend(
        self, tx: Tx, lease: Lease, step: StepWrite, waiting: dict[str, Any], until: float,
        now: float,
    ) -> None:
        moved = tx.one(
            "suspend_leased_run",
            id=lease.run_id,
            worker_id=lease.worker_id,
            attempt=lease.attempt,
            waiting_for=dumps(waiting),
            available_at=until,
            now=now,
        )
        if moved is None:
            raise LeaseLost(lease.run_id)
        write_step(tx, lease.run_id, lease.attempt, step)
        tx.run("set_attempt_status", run_id=lease.run_id, number=lease.attempt,
               status="waiting", worker_id=lease.worker_id)

    def release_run(self, lease: Lease, now: float) -> bool:
        """Hand a leased run back to the queue without ending its attempt."""
        with self.db.write() as tx:
            if tx.one("release_leased_run", id=lease.run_id, worker_id=lease.worker_id,
                      attempt=lease.attempt, now=now) is None:
                return False
            add_timeline(tx, lease.run_id, "run.queued", now, attempt=lease.attempt,
                         released_by=lease.worker_id, data={"from": "running"})
        return True

    def renew_leases(
        self, leases: Sequence[Lease], now: float, lease_seconds: float
    ) -> tuple[set[str], set[str]]:
        """Extend ``leases``; return ``(runs asked to cancel, runs whose lease is lost)``.

        A worker renews only the runs it is executing: a run it holds but no
        longer executes (its ending could not be recorded, say the database
        went away at that moment) then expires and is rescued, instead of
        staying leased for as long as the worker lives.
        """
        cancels: set[str] = set()
        lost: set[str] = set()
        if not leases:
            return cancels, lost
        with self.db.write() as tx:
            for lease in leases:
                row = tx.one(
                    "renew_lease",
                    id=lease.run_id,
                    worker_id=lease.worker_id,
                    attempt=lease.attempt,
                    lease_expires_at=now + lease_seconds,
                    now=now,
                )
                if row is None:
                    lost.add(lease.run_id)
                elif row["cancel_requested"]:
                    cancels.add(lease.run_id)
        return cancels, lost

    def expired_leases(self, now: float, limit: int = 100) -> list[ExpiredLease]:
        with self.db.read() as tx:
            found = tx.all("expired_leases", now=now, limit=limit)
        return [
            ExpiredLease(
                lease=Lease(r["id"], r["lease_owner"], r["attempt"]),
                job=r["job"],
                attempts_used=r["attempt"] - r["retry_base"],
                max_attempts=r["max_attempts"],
            )
            for r in found
        ]

    def promote_due(self, now: float, limit: int = 500) -> int:
        """Move scheduled and retrying runs whose time has come to ``queued``.

        Workers claim due runs directly; this keeps statuses honest for runs of
        jobs no live worker serves.
        """
        with self.db.write() as tx:
            due = tx.all("due_promotions", now=now, limit=limit)
            for row in due:
                full = tx.one("get_run", id=row["id"])
                assert full is not None
                move_run(tx, full, Status.QUEUED, now, available_at=full["available_at"],
                           at=full["available_at"])
        return len(due)

    def next_due_at(self) -> float | None:
        with self.db.read() as tx:
            row = tx.one("next_due")
        return None if row is None or row["due"] is None else float(row["due"])

    def register_worker(self, worker_id: str, hostname: str, pid: int, jobs: Sequence[str],
                        queues: Sequence[str] | None, concurrency: int, now: float) -> None:
        with self.db.write() as tx:
            tx.run("upsert_worker", id=worker_id, hostname=hostname, pid=pid,
                   jobs=dumps(sorted(jobs)), queues=dumps(queues) if queues else None,
                   concurrency=concurrency, now=now)
            tx.run("delete_stale_workers", before=now - 300)

    def unregister_worker(self, worker_id: str) -> None:
        with self.db.write() as tx:
            tx.run("delete_worker", id=worker_id)

    def list_workers(self) -> list[dict[str, Any]]:
        with self.db.read() as tx:
            found = tx.all("list_workers")
        return [
            {
                "id": r["id"], "hostname": r["hostname"], "pid": r["pid"],
                "jobs": json.loads(r["jobs"]), "concurrency": r["concurrency"],
                "started_at": r["started_at"], "heartbeat_at": r["heartbeat_at"],
            }
            for r in found
        ]
