"""What workers do to runs: claim, checkpoint steps, finish, suspend, keep leases.

Every write by a worker is conditional on its lease (owner and attempt), so a
worker that lost its run (lease expired and rescued) can never overwrite what
the new owner does; it gets :class:`LeaseLost` and abandons the invocation.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

from ..engine.outcomes import CANCELLED_WHILE_RUNNING
from ..engine.transitions import Status
from ..errors import LeaseLost
from ..processes import ProcessId
from ..serialization import dumps, loads
from . import rows
from .base import ClaimedRun, ExpiredLease, Lease, LogWrite, Outcome, StepWrite
from .database import Database, Row, Tx
from .flow import NO_RULES, ClaimRules, choose_runs
from .groupcommit import GroupCommit, group_commit_of
from .runs import add_timeline, move_run, start_failure_handler, waiting_data

#: "No expiry condition" for finishing a run with a live lease.
NO_DEADLINE = 1e300


def write_logs(tx: Tx, run_id: str, logs: Sequence[LogWrite]) -> None:
    if not logs:
        return
    # PostgreSQL text cannot hold NUL; a log line must never fail its step.
    tx.many("insert_log", [
        {"run_id": run_id, "attempt": log.attempt, "step": log.step, "at": log.at,
         "level": log.level, "logger": log.logger.replace("\x00", "\ufffd"),
         "message": log.message.replace("\x00", "\ufffd"), "fields": log.fields}
        for log in logs])


#: The data of the timeline entry of an ending.
_FROM_RUNNING = dumps({"from": "running"})


#: Result and error text (characters) up to which SQLite ends a run together with
#: others: the shared statement reads its input as JSON, which SQLite parses
#: again for each field, so a long text is cheaper in a statement of its own.
SHARED_ENDING_TEXT = 1024


def _ending(lease: Lease, outcome: Outcome, now: float, expired_before: float,
            terminal: bool = True) -> dict[str, Any]:
    """The parameters of ``finish_leased_run`` for ``outcome`` (and the fields of an
    ending in the shared statements)."""
    return {"id": lease.run_id, "worker_id": lease.worker_id, "attempt": lease.attempt,
            "expired_before": expired_before, "status": outcome.status,
            "result": outcome.result, "error": dumps(outcome.error) if outcome.error else None,
            "finished_at": now if terminal else None, "available_at": outcome.retry_at,
            "now": now}


def _give_cancel_reason(tx: Tx, run_id: str, attempt: int) -> None:
    """A run cancelled while running takes as its error message the reason its
    cancel was asked with (the latest request that gave one), as a run
    cancelled at once does; so does its attempt, when that ended cancelled.

    The statements that end runs write ``CANCELLED_WHILE_RUNNING``: the reason
    is read only here, on the way to a cancelled ending, never on the others.
    """
    reasons = [reason for row in tx.all("cancel_requests", run_id=run_id)
               if isinstance(reason := (loads(row["data"]) or {}).get("reason"), str)]
    if not reasons:
        return
    error = dumps({**CANCELLED_WHILE_RUNNING, "message": reasons[-1]})
    tx.run("set_cancel_error", run_id=run_id, error=error)
    tx.run("set_cancelled_attempt_error", run_id=run_id, number=attempt, error=error)


def _finish_leased_sqlite(tx: Tx, endings: list[Any]) -> set[str]:
    """SQLite: end the leased runs of ``endings`` (as in :func:`_finish_recorded`);
    the ids of those whose lease was still held. Endings with short texts go in
    one statement (``finish_many_leased``), the others one each."""
    ended: set[str] = set()
    shared = []
    for lease, outcome, _, now, expired_before in endings:
        params = _ending(lease, outcome, now, expired_before)
        if len(params["result"] or "") + len(params["error"] or "") <= SHARED_ENDING_TEXT:
            shared.append(params)
        elif tx.one("finish_leased_run", **params) is not None:
            ended.add(lease.run_id)
    if shared:
        ended.update(row["id"] for row in tx.all("finish_many_leased", endings=dumps(shared)))
    return ended


def _finish_recorded(tx: Tx, endings: list[Any]) -> list[bool]:
    """Completed and cancelled endings: the run, its attempt, its timeline entry.

    ``endings`` holds ``(lease, outcome, logs, now, expired_before)``; the
    result says, for each, whether the lease was still held (and the run ended).
    PostgreSQL does it all in one statement (``finish_many_recorded``); SQLite
    ends the runs (:func:`_finish_leased_sqlite`), then writes the attempts and
    the entries in a batch each.
    """
    if tx.dialect == "postgres":
        found = tx.all("finish_many_recorded", endings=dumps([
            {**_ending(lease, outcome, now, expired_before),
             "kind": f"run.{outcome.status}", "data": _FROM_RUNNING}
            for lease, outcome, _, now, expired_before in endings]))
        ended = {row["id"] for row in found}
    else:
        ended = _finish_leased_sqlite(tx, endings)
        kept = [e for e in endings if e[0].run_id in ended]
        tx.many("update_attempt", [
            {"run_id": lease.run_id, "number": lease.attempt, "status": outcome.status,
             "finished_at": now, "error": dumps(outcome.error) if outcome.error else None}
            for lease, outcome, _, now, _ in kept])
        tx.many("insert_timeline", [
            {"run_id": lease.run_id, "at": now, "kind": f"run.{outcome.status}",
             "attempt": lease.attempt, "step": None, "data": _FROM_RUNNING}
            for lease, outcome, _, now, _ in kept])
    for lease, outcome, logs, _, _ in endings:
        if lease.run_id in ended:
            write_logs(tx, lease.run_id, logs)
            if outcome.status == "cancelled":
                _give_cancel_reason(tx, lease.run_id, lease.attempt)
    return [lease.run_id in ended for lease, *_ in endings]


def _save_steps(tx: Tx, saves: list[Any]) -> list[int | None]:
    """Step checkpoints in one statement (``save_many_recorded``).

    ``saves`` holds ``(lease, step, logs, lease_expires_at, now, data)``; the
    result holds, for each, the run's ``cancel_requested``, or None when the
    lease was lost (nothing of that checkpoint is written).
    """
    found = tx.all("save_many_recorded", saves=dumps([
        {"ord": ord_, "run_id": lease.run_id, "worker_id": lease.worker_id,
         "attempt": lease.attempt, "lease_expires_at": lease_expires_at, "now": now,
         "key": step.key, "name": step.name, "step_kind": step.kind,
         "function": step.function, "status": step.status, "result": step.result,
         "error": dumps(step.error) if step.error else None,
         "started_at": step.started_at, "finished_at": step.finished_at,
         "timeline_kind": f"step.{step.status}", "data": dumps(data)}
        for ord_, (lease, step, _, lease_expires_at, now, data) in enumerate(saves)]))
    cancels: list[int | None] = [None] * len(saves)
    for row in found:
        cancels[row["ord"]] = int(row["cancel_requested"])
        lease, _, logs, *_ = saves[row["ord"]]
        write_logs(tx, lease.run_id, logs)
    return cancels


def write_step(tx: Tx, run_id: str, attempt: int, step: StepWrite) -> bool:
    """Record ``step``; ``False`` when its key is a step completed already, whose
    result stays as it is (nothing is written)."""
    return tx.run(
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
    ) > 0


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


class _Claimed(NamedTuple):
    """A run a claim took, as its transaction left it (see :class:`ClaimedRun`)."""

    row: Row
    lease: Lease
    #: the rows of its completed steps: they become steps after the commit
    steps: Sequence[Row]
    new_attempt: bool


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
                 data: str | None) -> None:
        """An entry; ``data`` is its JSON text (encoded once for the whole claim)."""
        self.entries.append({"run_id": run_id, "at": at, "kind": kind, "attempt": attempt,
                             "step": None, "data": data})

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

    def all_limited(self, query: str, limit: int, **params: Any) -> list[Row]:
        self._flush()
        return self._tx.all_limited(query, limit, **params)

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

    def link_lost(self, exc: BaseException) -> bool:
        return self._tx.link_lost(exc)


def _held(r: Row) -> ExpiredLease:
    """The lease a running run's row holds, with its attempts budget."""
    return ExpiredLease(
        lease=Lease(r["id"], r["lease_owner"], r["attempt"]),
        job=r["job"],
        attempts_used=r["attempt"] - r["retry_base"],
        max_attempts=r["max_attempts"],
    )


class ExecutionStore:
    db: Database

    @property
    def group_commit(self) -> GroupCommit:
        """This process's shared transactions for claims, checkpoints and endings."""
        return group_commit_of(self)

    def preparing_write(self) -> AbstractContextManager[None]:
        """A block in which this thread gets a write ready: shared transactions
        starting meanwhile wait for it a moment (see :meth:`GroupCommit.preparing`)."""
        return self.group_commit.preparing()

    def expect_writes(self, count: int, within: float) -> None:
        """``count`` threads of this process are about to record endings or steps:
        let them share one transaction (see :meth:`GroupCommit.expect`)."""
        self.group_commit.expect(count, within)

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

        def work(tx: Tx) -> list[_Claimed]:
            if tx.dialect == "postgres" and not set(jobs) & set(rules.key_limits):
                plain = self._claim_plain(tx, worker_id, jobs, limit, lease_seconds, now,
                                          queues, rules)
                if plain is not None:
                    return plain
            chosen: list[Row] = []
            claimed: list[_Claimed] = []

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
        # The rows become runs and steps after the commit: the write lock is not
        # held for that (a run that resumes after thousands of steps reads them all).
        return [ClaimedRun(run=rows.run(c.row), lease=c.lease, retry_base=c.row["retry_base"],
                           steps={s["key"]: rows.step(s) for s in c.steps},
                           new_attempt=c.new_attempt)
                for c in self.group_commit.run(work, first=True)]

    def _claim_plain(self, tx: Tx, worker_id: str, jobs: Sequence[str], limit: int,
                     lease_seconds: float, now: float, queues: Sequence[str] | None,
                     rules: ClaimRules) -> list[_Claimed] | None:
        """PostgreSQL: the claim as one statement (``claim_plain``), or None when a
        queue is paused or limited and flow control must choose the runs."""
        found = tx.all_limited(
            "claim_plain", limit, now=now, jobs=sorted(jobs),
            queues=sorted(queues) if queues is not None else None,
            worker_id=worker_id, lease_expires_at=now + lease_seconds,
            failure_jobs=list(rules.on_failure), failure_handlers=list(rules.on_failure.values()),
            started_data=dumps({"worker": worker_id}),
        )
        if found and found[0]["controlled"]:
            return None
        moved = sorted((r for r in found if r["id"] is not None),
                       key=lambda r: (-r["was_priority"], r["was_available"], r["id"]))
        return [
            _Claimed(
                row=row,
                lease=Lease(row["id"], worker_id, row["attempt"]),
                steps=row["completed_steps"] or (),
                new_attempt=not row["was_resuming"],
            )
            for row in moved
        ]

    def _claim_batch(self, tx: Tx, cands: list[Row], worker_id: str, lease_seconds: float,
                     now: float, rules: ClaimRules) -> list[_Claimed]:
        """Move the chosen runs to ``running`` (one statement) and start their attempts."""
        later = _ClaimRecords()
        by_handler: dict[str | None, list[str]] = {}
        for cand in cands:
            if cand["status"] != Status.QUEUED:
                # the attempt before this claim, as when maintenance queues it (move_run)
                later.timeline(cand["id"], "run.queued", cand["available_at"],
                               cand["attempt"] or None, dumps({"from": cand["status"]}))
            by_handler.setdefault(rules.on_failure.get(cand["job"]), []).append(cand["id"])
        moved: dict[str, Row] = {}
        for on_failure, ids in by_handler.items():
            for row in tx.all("claim_update_many", ids=ids if tx.dialect == "postgres"
                              else json.dumps(ids), worker_id=worker_id,
                              lease_expires_at=now + lease_seconds, on_failure=on_failure,
                              now=now):
                moved[row["id"]] = row
        claimed = []
        started_by = dumps({"worker": worker_id})
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
                later.timeline(row["id"], "attempt.started", now, attempt, started_by)
            # A first attempt that is not resuming has no steps yet: skip the read.
            steps = (tx.all("completed_steps", run_id=row["id"]) if resuming or attempt > 1
                     else ())
            claimed.append(_Claimed(row, Lease(row["id"], worker_id, attempt), steps,
                                    not resuming))
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
        data: dict[str, Any] = {"duration": (step.finished_at or now) - step.started_at}
        if step.function:
            data["function"] = step.function
        if step.error:
            data["error"] = {"type": step.error["type"], "message": step.error["message"]}
        if self.db.dialect == "postgres":
            # The same writes as below, in one statement; checkpoints that share a
            # transaction go as one statement for all of them.
            cancel = self.group_commit.run_combined(
                _save_steps, (lease, step, logs, now + lease_seconds, now, data),
                one_statement=not logs)
            if cancel is None:
                raise LeaseLost(lease.run_id)
            return bool(cancel)

        def work(tx: Tx) -> bool:
            cancel = renew(tx, lease, now, lease_seconds)
            if not write_step(tx, lease.run_id, lease.attempt, step):
                write_logs(tx, lease.run_id, logs)
                return cancel
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
    ) -> str | None:
        """End the leased attempt as ``outcome`` says; the run's status after it:
        the outcome's, or ``cancelled`` when a cancel was requested while a
        failing attempt ran. None if the lease was lost."""
        status = Status(outcome.status)
        terminal = status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)
        if outcome.retry_at is not None and outcome.retry_at < now:
            # Due at once, by the clock of another process (a remote worker's, a
            # little behind): not before this ending, which the timeline shows first.
            outcome = dataclasses.replace(outcome, retry_at=now)

        if status in (Status.COMPLETED, Status.CANCELLED):
            # The writes below for these endings (one timeline entry, no failure
            # handler); endings that share a transaction are written together.
            ended = self.group_commit.run_combined(
                _finish_recorded, (lease, outcome, logs, now, expired_before),
                one_statement=self.db.dialect == "postgres" and not logs
                and status == Status.COMPLETED)
            return status.value if ended else None

        def work(tx: Tx) -> str | None:
            ending = _ending(lease, outcome, now, expired_before, terminal)
            # A cancel requested while the attempt ran cancels the run instead.
            moved = tx.one("retry_leased_run" if status == Status.RETRYING
                           else "fail_leased_run", **ending,
                           cancel_error=dumps(CANCELLED_WHILE_RUNNING))
            if moved is None:
                return None
            ended = Status(moved["status"])
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
            if ended == Status.RETRYING and outcome.retry_at is not None:
                extra["next_attempt_at"] = outcome.retry_at
            add_timeline(tx, lease.run_id, f"run.{ended.value}", now, attempt=lease.attempt,
                         data=extra)
            if ended == Status.CANCELLED:  # a cancel was requested while it ran
                _give_cancel_reason(tx, lease.run_id, lease.attempt)
            if ended == Status.FAILED:
                start_failure_handler(tx, moved, outcome.error, now)
            return ended.value

        return self.group_commit.run(work)

    def suspend_for_sleep(
        self, lease: Lease, step: StepWrite, until: float, logs: Sequence[LogWrite], now: float
    ) -> None:
        """Park the run until ``until``; it holds no worker slot meanwhile."""
        with self.db.write() as tx:
            waiting = {"kind": "sleep", "step": step.key, "until": until}
            if self._suspend(tx, lease, step, waiting, until, now):
                add_timeline(tx, lease.run_id, "run.waiting", now, attempt=lease.attempt,
                             step=step.key,
                             data={"from": "running", **waiting_data(waiting)})
            write_logs(tx, lease.run_id, logs)

    def _suspend(
        self, tx: Tx, lease: Lease, step: StepWrite, waiting: dict[str, Any], until: float,
        now: float,
    ) -> bool:
        """Park the leased run; True if it now waits, False if it was cancelled
        instead (a cancel was requested while it ran: it must not wait with
        the cancel forgotten). Either way the invocation ends here."""
        moved = tx.one(
            "suspend_leased_run",
            id=lease.run_id,
            worker_id=lease.worker_id,
            attempt=lease.attempt,
            waiting_for=dumps(waiting),
            available_at=until,
            cancel_error=dumps(CANCELLED_WHILE_RUNNING),
            now=now,
        )
        if moved is None:
            raise LeaseLost(lease.run_id)
        if moved["status"] == Status.CANCELLED:
            tx.run("update_attempt", run_id=lease.run_id, number=lease.attempt,
                   status="cancelled", finished_at=now, error=dumps(CANCELLED_WHILE_RUNNING))
            add_timeline(tx, lease.run_id, "run.cancelled", now, attempt=lease.attempt,
                         data={"from": "running"})
            _give_cancel_reason(tx, lease.run_id, lease.attempt)
            return False
        write_step(tx, lease.run_id, lease.attempt, step)
        tx.run("set_attempt_status", run_id=lease.run_id, number=lease.attempt,
               status="waiting", worker_id=lease.worker_id)
        return True

    def release_run(self, lease: Lease, now: float,
                    logs: Sequence[LogWrite] = ()) -> str | None:
        """Hand a leased run back to the queue without ending its attempt (or,
        when a cancel was requested, cancel it), writing the attempt's ``logs``
        not written yet: the run's status after it, ``"queued"`` or
        ``"cancelled"``, or None when the lease was no longer held (nothing written)."""
        with self.db.write() as tx:
            moved = tx.one("release_leased_run", id=lease.run_id, worker_id=lease.worker_id,
                           attempt=lease.attempt, cancel_error=dumps(CANCELLED_WHILE_RUNNING),
                           now=now)
            if moved is None:
                return None
            write_logs(tx, lease.run_id, logs)
            if moved["status"] == Status.CANCELLED:  # asked to cancel: not handed on
                tx.run("update_attempt", run_id=lease.run_id, number=lease.attempt,
                       status="cancelled", finished_at=now,
                       error=dumps(CANCELLED_WHILE_RUNNING))
                add_timeline(tx, lease.run_id, "run.cancelled", now, attempt=lease.attempt,
                             released_by=lease.worker_id, data={"from": "running"})
                _give_cancel_reason(tx, lease.run_id, lease.attempt)
                return Status.CANCELLED.value
            add_timeline(tx, lease.run_id, "run.queued", now, attempt=lease.attempt,
                         released_by=lease.worker_id, data={"from": "running"})
        return Status.QUEUED.value

    def renew_leases(
        self, leases: Sequence[Lease], now: float, lease_seconds: float,
        logs: Mapping[str, Sequence[LogWrite]] | None = None,
    ) -> tuple[set[str], set[str]]:
        """Extend ``leases``; return ``(runs asked to cancel, runs whose lease is lost)``.

        A worker renews only the runs it is executing: a run it holds but no
        longer executes (its ending could not be recorded, say the database
        went away at that moment) then expires and is rescued, instead of
        staying leased for as long as the worker lives.

        ``logs``: run id -> log records to write in the same transaction, for
        the runs whose lease still holds (those of a lost lease are dropped, as
        a checkpoint refused for it drops its own).
        """
        if not leases:
            return set(), set()

        def work(tx: Tx) -> dict[str, bool]:
            """Run id -> cancel requested, for the runs still held."""
            if tx.dialect == "postgres":  # one statement for all
                found = tx.all("renew_many", leases=dumps([
                    {"id": lease.run_id, "worker_id": lease.worker_id, "attempt": lease.attempt}
                    for lease in leases]), lease_expires_at=now + lease_seconds, now=now)
                held = {row["id"]: bool(row["cancel_requested"]) for row in found}
            else:
                held = {}
                for lease in leases:
                    row = tx.one("renew_lease", id=lease.run_id, worker_id=lease.worker_id,
                                 attempt=lease.attempt, lease_expires_at=now + lease_seconds,
                                 now=now)
                    if row is not None:
                        held[lease.run_id] = bool(row["cancel_requested"])
            for run_id, records in (logs or {}).items():
                if run_id in held:
                    write_logs(tx, run_id, records)
            return held

        # In the shared transactions of this process's worker writes: never waiting
        # on their row locks (nor they on its), and one flush less.
        held = self.group_commit.run(work)
        cancels = {run_id for run_id, cancel in held.items() if cancel}
        lost = {lease.run_id for lease in leases if lease.run_id not in held}
        return cancels, lost

    def expired_leases(self, now: float, limit: int = 100) -> list[ExpiredLease]:
        with self.db.read() as tx:
            found = tx.all("expired_leases", now=now, limit=limit)
        return [_held(r) for r in found]

    def leases_held_by(self, worker_id: str, limit: int = 100) -> list[ExpiredLease]:
        """The leases of running runs that ``worker_id`` holds (expired or not)."""
        with self.db.read() as tx:
            found = tx.all("leases_held_by", worker_id=worker_id, limit=limit)
        return [_held(r) for r in found]

    def workers_in_space(self, space: str, worker_id: str) -> list[tuple[str, int, int]]:
        """``(id, pid, started)`` of the workers other than ``worker_id`` whose
        process is in ``space`` (see :mod:`stackshift.processes`)."""
        with self.db.read() as tx:
            found = tx.all("workers_in_space", space=space, id=worker_id)
        return [(r["id"], r["pid"], r["process_started"]) for r in found]

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
                        queues: Sequence[str] | None, concurrency: int, now: float,
                        process: ProcessId | None = None) -> None:
        """Register or refresh a worker; ``process``: its process, when known, so
        that workers on the same machine can tell when it has ended."""
        with self.db.write() as tx:
            tx.run("upsert_worker", id=worker_id, hostname=hostname, pid=pid,
                   jobs=dumps(sorted(jobs)), queues=dumps(queues) if queues else None,
                   concurrency=concurrency, now=now,
                   process_space=process.space if process else None,
                   process_started=process.started if process else None)
            tx.run("delete_stale_workers", before=now - 300)

    def publish_jobs(self, jobs: Sequence[tuple[str, str | None, int | None]],
                     now: float) -> None:
        """Record each job's defaults, ``(name, queue, max_attempts)``, as a worker
        defines them, for processes that start runs without the job's code."""
        if jobs:
            with self.db.write() as tx:
                tx.many("upsert_job", [{"name": name, "queue": queue, "max_attempts": attempts,
                                        "now": now} for name, queue, attempts in jobs])

    def job_defaults(self, name: str) -> tuple[str | None, int | None] | None:
        """``(queue, max_attempts)`` of job ``name`` as its workers last published
        them, or None when no worker has."""
        with self.db.read() as tx:
            row = tx.one("get_job", name=name)
        return None if row is None else (row["queue"], row["max_attempts"])

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
