"""Starting runs, reading them back, and the operator actions cancel and retry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ..engine import transitions
from ..engine.transitions import Status
from ..errors import (
    IdempotencyConflictError,
    InvalidTransitionError,
    RunNotFoundError,
    ValidationError,
)
from ..ids import new_id, unknowable_id
from ..models import Attempt, LogEntry, Page, Run, Step, TimelineEntry
from ..serialization import digest, dumps, loads, same_numbers
from ..wording import quoted
from . import rows
from .base import NewRun, RunFilter
from .database import Database, Row, Tx
from .groupcommit import group_commit_of

if TYPE_CHECKING:
    from .postgres import PostgresDatabase


def add_timeline(
    tx: Tx,
    run_id: str,
    kind: str,
    at: float,
    *,
    attempt: int | None = None,
    step: str | None = None,
    data: dict[str, Any] | None = None,
    **extra: Any,
) -> None:
    """Append a timeline entry; ``data`` and ``extra`` become its details."""
    data = {**(data or {}), **extra}
    tx.run(
        "insert_timeline",
        run_id=run_id,
        at=at,
        kind=kind,
        attempt=attempt,
        step=step,
        data=dumps(data) if data else None,
    )


def waiting_data(waiting: dict[str, Any]) -> dict[str, Any]:
    """Timeline data for a run starting to wait (``waiting_for`` minus the step)."""
    data = {("waiting_for" if k == "kind" else k): v for k, v in waiting.items() if k != "step"}
    return {k: v for k, v in data.items() if v is not None}


def fingerprints(job: str, payload: str) -> tuple[str, str]:
    """The fingerprint of a start's job and payload, by which a duplicate start is
    told from a conflicting one, and the one keys taken by earlier versions hold.

    Payloads are compared with whole-number floats as integers (``{"n": 1.0}``
    is ``{"n": 1}``: :func:`same_numbers`). Earlier versions compared the text
    as it was, so a key taken by one of them for a payload with such a float
    holds the second value, still accepted while it lives. The two are the
    same for every other payload.
    """
    exact = digest(job + "\n" + payload)
    normal = same_numbers(payload)
    return (exact if normal is None else digest(job + "\n" + normal)), exact


def _conflict(key: str, target_id: str) -> IdempotencyConflictError:
    return IdempotencyConflictError(
        f"idempotency key {key!r} belongs to run {target_id} with a different job or payload",
        target_id,
    )


def _check_keys_agree(news: list[NewRun], prints: list[tuple[str, str] | None]) -> None:
    """Refuse one call's starts that give one idempotency key to different payloads:
    the key would name the first of them, a run that the conflict rolls back."""
    first: dict[str, int] = {}
    for n, new in enumerate(news):
        key = new.idempotency_key
        if key is None:
            continue
        m = first.setdefault(key, n)
        taken, given = prints[m], prints[n]
        if m != n and taken is not None and given is not None and taken[0] not in given:
            raise ValidationError(
                f"idempotency_keys[{n}] repeats idempotency_keys[{m}] ({key!r}) with another"
                " payload: a key names one run, so nothing was started")


def load_run(tx: Tx, run_id: str, *, lock: bool = False) -> Row:
    """The run's row; with ``lock``, held against other writers until the transaction ends."""
    row = (None if unknowable_id(run_id)
           else tx.one("lock_run" if lock else "get_run", id=run_id))
    if row is None:
        raise RunNotFoundError(f"no run with id {quoted(run_id)}")
    return row


def move_run(
    tx: Tx,
    row: Row,
    target: Status,
    now: float,
    *,
    error: dict[str, Any] | None = None,
    available_at: float | None = None,
    resuming: bool = False,
    kind: str | None = None,
    at: float | None = None,
    **data: Any,
) -> bool:
    """Apply one state-machine transition to a run not held by a worker.

    Returns False (and writes nothing) when the run changed status meanwhile.
    """
    transitions.check(row["status"], target.value)
    moved = tx.one(
        "set_status",
        id=row["id"],
        from_status=row["status"],
        status=target.value,
        available_at=available_at,
        finished_at=now if target in transitions.TERMINAL else None,
        error=dumps(error) if error else row["error"],
        resuming=1 if resuming else 0,
        waiting_for=None,
        now=now,
    )
    if moved is None:
        return False
    if row["status"] == Status.WAITING:
        tx.run("delete_wait", run_id=row["id"])
    add_timeline(
        tx,
        row["id"],
        kind or f"run.{target.value}",
        now if at is None else at,
        attempt=row["attempt"] or None,
        data={"from": row["status"]},
        **data,
    )
    if target == Status.FAILED:
        start_failure_handler(tx, row, error, now)
    return True


def insert_run(tx: Tx, new: NewRun, now: float) -> Run:
    """Start ``new`` inside ``tx`` (see :meth:`RunStore.start_run`).

    Runs started as part of another change (a schedule's tick, a failure
    handler) use it so that both commit together.
    """
    row, created = _insert_run_row(tx, new, now)
    return rows.run(row, created=created)


def _insert_run_row(tx: Tx, new: NewRun, now: float,
                    prints: tuple[str, str] | None = None,
                    again_of: str | None = None) -> tuple[Row, bool]:
    """:func:`insert_run`'s writes: the run's row, and whether it was created (else
    it is the run the idempotency key already names). The row becomes a
    :class:`Run` after the commit, so that the write lock is not held for that.
    ``prints``: :func:`fingerprints` of ``new``, when worked out already;
    ``again_of``: the run ``new`` starts again, named on its first entry."""
    if new.idempotency_key is not None:
        print_, earlier = prints or fingerprints(new.job, new.payload)
        taken = tx.one(
            "claim_idempotency_key",
            scope="run",
            key=new.idempotency_key,
            target_id=new.id,
            fingerprint=print_,
            now=now,
            expires_at=new.idempotency_expires_at,
        )
        if taken is None:
            existing = tx.one("get_idempotency_key", scope="run", key=new.idempotency_key)
            assert existing is not None  # the conflict proves the row exists
            if existing["fingerprint"] not in (print_, earlier):
                raise _conflict(new.idempotency_key, existing["target_id"])
            row = load_run(tx, existing["target_id"])
            add_timeline(tx, row["id"], "run.duplicate_start", now)
            return row, False
    status = Status.SCHEDULED if new.scheduled_at is not None else Status.QUEUED
    inserted = tx.one(
        "insert_run",
        id=new.id,
        job=new.job,
        queue=new.queue,
        status=status.value,
        payload=new.payload,
        max_attempts=new.max_attempts,
        default_max_attempts=new.default_max_attempts,
        idempotency_key=new.idempotency_key,
        priority=new.priority,
        concurrency_key=new.concurrency_key,
        now=now,
        scheduled_at=new.scheduled_at,
        available_at=new.scheduled_at if new.scheduled_at is not None else now,
    )
    data: dict[str, Any] = {"scheduled_at": new.scheduled_at} if new.scheduled_at else {}
    if again_of is not None:
        data["again_of"] = again_of
    add_timeline(tx, new.id, f"run.{status.value}", now, data=data)
    assert inserted is not None  # RETURNING the new row
    return inserted, True


def _start_many(tx: Tx, starts: list[tuple[NewRun, float]]) -> list[Run]:
    """PostgreSQL: :func:`insert_run` for starts without an idempotency key, all in
    one statement (``start_many``)."""
    found = tx.all("start_many", starts=dumps([
        {"ord": ord_, "id": new.id, "job": new.job, "queue": new.queue,
         "status": (Status.SCHEDULED if new.scheduled_at is not None else Status.QUEUED).value,
         "payload": new.payload, "max_attempts": new.max_attempts,
         "default_max_attempts": new.default_max_attempts, "priority": new.priority,
         "concurrency_key": new.concurrency_key, "now": now, "scheduled_at": new.scheduled_at,
         "available_at": new.scheduled_at if new.scheduled_at is not None else now,
         "data": dumps({"scheduled_at": new.scheduled_at}) if new.scheduled_at else None}
        for ord_, (new, now) in enumerate(starts)]))
    by_id = {row["id"]: row for row in found}
    return [rows.run(by_id[new.id]) for new, _ in starts]


#: ``LIMIT`` for "all of them", in both dialects.
_ALL = 2 ** 62


_T = TypeVar("_T")


def _in_order(found: list[Row]) -> list[TimelineEntry]:
    """The entries of ``found``, in the order of :meth:`RunStore.timeline`."""
    return [rows.timeline_entry(r) for r in sorted(found, key=lambda r: (r["at"], r["id"]))]


def _pause_rows(pauses: list[Row]) -> int:
    """How many rows of sleeps and waits the waterfall draws for ``pauses`` (the
    ``run.waiting`` and ``event.received`` entries of a run, in time order): one
    for each ``run.waiting``, and one for each event a wait took without pausing
    (the first entry of its attempt and step)."""
    seen: set[tuple[Any, Any]] = set()
    count = 0
    for row in pauses:
        key = (row["attempt"], row["step"])
        if row["kind"] == "run.waiting" or key not in seen:
            count += 1
        seen.add(key)
    return count


def _latest(tx: Tx, make: Callable[[Row], _T], limit: int, query: str, count: str,
            run_id: str) -> tuple[list[_T], int]:
    """A run's last ``limit`` rows of ``query`` (which gives them newest first),
    oldest first, and how many it has before them (rows of ``count`` that are
    not among them)."""
    found = [make(r) for r in reversed(tx.all(query, run_id=run_id, limit=limit))]
    if len(found) < limit:
        return found, 0
    return found, int(tx.all(count, run_id=run_id)[0]["n"]) - len(found)


#: How long a failure handler's idempotency key (``on_failure:<run>:<attempt>``) lives.
FAILURE_HANDLER_KEY_TTL = 7 * 86400.0


def start_failure_handler(tx: Tx, row: Row, error: dict[str, Any] | None, now: float) -> None:
    """Start the ``on_failure`` job of a run that just failed for good, in ``tx``.

    ``row`` is the failed run (its ``on_failure`` column says which job, set by
    the worker that claimed it). The handler gets the failed run's id, job,
    queue, payload and error; its idempotency key names the run and its last
    attempt, so a failure starts one handler run, and a failure after a manual
    retry starts another. A handler run that fails starts no handler itself,
    so handlers cannot start each other in a loop.
    """
    spec = loads(row["on_failure"]) if row["on_failure"] else None
    if not spec or (row["idempotency_key"] or "").startswith("on_failure:"):
        return  # a failing handler starts no handler of its own: no loops
    attempt = row["attempt"]
    payload = {
        "run_id": row["id"],
        "job": row["job"],
        "queue": row["queue"],
        "payload": loads(row["payload"]),
        "error": error,
    }
    new = NewRun(
        id=new_id("run"),
        job=spec["job"],
        queue=spec["queue"],
        payload=dumps(payload),
        max_attempts=spec.get("max_attempts"),
        priority=0,
        concurrency_key=None,
        scheduled_at=None,
        idempotency_key=f"on_failure:{row['id']}:{attempt or 0}",
        idempotency_expires_at=now + FAILURE_HANDLER_KEY_TTL,
        default_max_attempts=spec.get("default_max_attempts") or 3,
    )
    try:
        started = insert_run(tx, new, now)
    except IdempotencyConflictError:  # the same key with another error: already handled
        return
    add_timeline(tx, row["id"], "run.failure_handler", now, handler_run_id=started.id,
                 handler_job=spec["job"])


def _retry_in(tx: Tx, run_id: str, now: float, *, only: str | None,
              queue: str | None) -> None:
    """Move a failed or cancelled run back to ``queued`` inside ``tx`` (see
    :meth:`RunStore.retry_run`); raises before writing anything when it may not."""
    row = load_run(tx, run_id, lock=True)
    status = Status(row["status"])
    if status not in transitions.RETRYABLE:
        raise InvalidTransitionError(
            f"run {run_id} is {status.value}; only failed or cancelled runs can be retried"
        )
    if only is not None and status.value != only:
        raise InvalidTransitionError(f"run {run_id} is {status.value}, not {only}")
    if queue is not None and row["queue"] != queue:
        raise InvalidTransitionError(f"run {run_id} is not in queue {queue}")
    tx.one("manual_retry", id=run_id, from_status=status.value, now=now)
    add_timeline(tx, run_id, "run.queued", now, manual_retry=True,
                 data={"from": status.value})


def _last_timeline_id(tx: Tx) -> int:
    row = tx.one("last_timeline_id")
    return int(row["id"]) if row is not None else 0


class _NotADuplicate(Exception):
    """Rolls back a start that turned out to create a run in a non-durable transaction."""


class RunStore:
    db: Database

    def start_run(self, new: NewRun, now: float) -> Run:
        """Insert ``new`` unless its idempotency key maps to a live run.

        Returns the new run (``created=True``) or the existing one
        (``created=False``). Raises :class:`IdempotencyConflictError` when the key
        is bound to another job or payload; nothing is written then.
        """
        # Worked out once, outside the transactions below.
        prints = None if new.idempotency_key is None else fingerprints(new.job, new.payload)
        if new.idempotency_key is not None and self.db.dialect == "sqlite":
            with self.db.read() as tx:
                key = tx.one("get_idempotency_key", scope="run", key=new.idempotency_key)
            if key is not None and key["expires_at"] > now:
                # A duplicate writes only a timeline note: no need to wait for the
                # disk. Should the key have expired meanwhile, start over durably.
                try:
                    with self.db.write(durable=False) as tx:
                        row, created = _insert_run_row(tx, new, now, prints)
                        run = rows.run(row, created=created)
                        if run.created:
                            raise _NotADuplicate
                    return run
                except _NotADuplicate:
                    pass
        elif new.idempotency_key is not None and self.db.dialect == "postgres":
            # A duplicate in one statement and one round trip, its note not waiting
            # for the WAL flush (sql/postgres.sql, duplicate_start). A key that is
            # not live goes the durable way below.
            assert prints is not None
            found = cast("PostgresDatabase", self.db).autocommit_one(
                "duplicate_start", key=new.idempotency_key,
                fingerprint=prints[0], earlier=prints[1], now=now,
            )
            if found is not None:
                if not found["matched"]:
                    raise _conflict(new.idempotency_key, found["target_id"])
                if found["id"] is not None:
                    return rows.run(found, created=False)
        # Starts from several threads share a transaction and its flush to disk.
        if new.idempotency_key is None and self.db.dialect == "postgres":
            return group_commit_of(self).run_combined(  # type: ignore[no-any-return]
                _start_many, (new, now), one_statement=True)
        row, created = group_commit_of(self).run(
            lambda tx: _insert_run_row(tx, new, now, prints))
        return rows.run(row, created=created)

    def start_runs(self, news: list[NewRun], now: float) -> list[Run]:
        """:meth:`start_run` for each of ``news``, in one transaction: all of them or,
        should one's key be bound to other work (:class:`IdempotencyConflictError`),
        none. A key given twice names one run, created by the first."""
        prints = [None if new.idempotency_key is None else fingerprints(new.job, new.payload)
                  for new in news]
        _check_keys_agree(news, prints)
        if self.db.dialect == "postgres" and all(p is None for p in prints):
            return group_commit_of(self).run(
                lambda tx: _start_many(tx, [(new, now) for new in news]))
        # Keys are claimed in their order, so that two calls claiming the same keys
        # at once on PostgreSQL wait for each other rather than deadlock.
        order = sorted(range(len(news)), key=lambda n: news[n].idempotency_key or "")
        found = group_commit_of(self).run(
            lambda tx: {n: _insert_run_row(tx, news[n], now, prints[n]) for n in order})
        return [rows.run(row, created=created)
                for row, created in (found[n] for n in range(len(news)))]

    def get_run(self, run_id: str) -> Run:
        with self.db.read() as tx:
            return rows.run(load_run(tx, run_id))

    def list_runs(self, filters: RunFilter, limit: int, cursor: str | None) -> Page[Run]:
        """Newest first. Filters are fixed column comparisons; values are parameters."""
        where, params = _run_filter(filters)
        params["limit"] = limit + 1
        if cursor is not None:
            where.append("id < :cursor")
            params["cursor"] = cursor
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT :limit"
        with self.db.read() as tx:
            found = tx.raw(sql, params)
        items = [rows.run(r) for r in found[:limit]]
        next_cursor = items[-1].id if len(found) > limit and items else None
        return Page(items, next_cursor)

    def count_runs_by_status(self, filters: RunFilter | None = None) -> dict[str, int]:
        """Runs per status, of those ``filters`` select (its status aside)."""
        where, params = _run_filter(replace(filters, status=None) if filters else RunFilter())
        sql = "SELECT status, COUNT(*) AS n FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.db.read() as tx:
            found = tx.raw(sql + " GROUP BY status", params)
        return {r["status"]: int(r["n"]) for r in found}

    def cancel_run(self, run_id: str, reason: str | None, now: float) -> Run:
        """Cancel at once when the run is not executing; else ask its worker to stop.

        Cancelling a cancelled run changes nothing; a completed or failed run
        cannot be cancelled (:class:`InvalidTransitionError`).
        """
        with self.db.write() as tx:
            row = load_run(tx, run_id, lock=True)
            status = Status(row["status"])
            if status == Status.CANCELLED:
                return rows.run(row)
            given: dict[str, Any] = {} if reason is None else {"reason": reason}  # no null
            if status == Status.RUNNING:
                tx.run("request_cancel", id=run_id, now=now)
                add_timeline(tx, run_id, "run.cancel_requested", now, **given)
            elif status in transitions.CANCELLABLE_AT_ONCE:
                error = {"type": "Cancelled", "message": reason or "cancelled", "traceback": None}
                move_run(tx, row, Status.CANCELLED, now, error=error, **given)
                tx.run("cancel_open_attempt", run_id=run_id, number=row["attempt"],
                       finished_at=now, error=dumps(error))
                if status == Status.WAITING:
                    tx.run("end_waiting_step", run_id=run_id, error=dumps(error), now=now)
            else:
                raise InvalidTransitionError(
                    f"run {run_id} is {status.value}; it cannot be cancelled"
                )
            return rows.run(load_run(tx, run_id))

    def start_again(self, run_id: str, new_run_id: str, now: float) -> Run:
        """Start a new run, ``new_run_id``, of ``run_id``'s job with its payload,
        queue, priority, concurrency key and number of attempts, but no idempotency
        key (the key names the run it started). Each run's timeline names the
        other: the new run's first entry (``again_of``) and the run's
        ``run.started_again`` (``new_run_id``), written in the same transaction."""
        with self.db.write() as tx:
            row = load_run(tx, run_id)
            new = NewRun(id=new_run_id, job=row["job"], queue=row["queue"],
                         payload=row["payload"], max_attempts=row["max_attempts"],
                         priority=row["priority"], concurrency_key=row["concurrency_key"],
                         scheduled_at=None, idempotency_key=None, idempotency_expires_at=None)
            inserted, _ = _insert_run_row(tx, new, now, again_of=run_id)
            add_timeline(tx, run_id, "run.started_again", now, new_run_id=new_run_id)
        return rows.run(inserted)

    def retry_run(self, run_id: str, now: float, *, only: str | None = None,
                  queue: str | None = None) -> Run:
        """Put a failed or cancelled run back in line with a fresh attempt budget.

        ``only``: retry it only if it has that status (a bulk retry of failed
        runs leaves a run cancelled meanwhile alone); ``queue``: only if it is
        in that queue. Otherwise ``InvalidTransitionError``, and nothing changes.
        """
        with self.db.write() as tx:
            _retry_in(tx, run_id, now, only=only, queue=queue)
            return rows.run(load_run(tx, run_id))

    def retry_runs(self, run_ids: list[str], now: float, *, only: str,
                   queue: str | None = None) -> list[str]:
        """:meth:`retry_run` for each of ``run_ids``, in one transaction (a bulk
        retry writes a batch at a time, not a run at a time); returns the ids
        retried. Runs unknown, or not ``only`` (nor in ``queue``), are skipped.
        """
        retried: list[str] = []
        with self.db.write() as tx:
            for run_id in run_ids:
                try:
                    _retry_in(tx, run_id, now, only=only, queue=queue)
                except (RunNotFoundError, InvalidTransitionError):
                    continue  # nothing was written for it
                retried.append(run_id)
        return retried

    def timeline(self, run_id: str) -> list[TimelineEntry]:
        with self.db.read() as tx:
            load_run(tx, run_id)
            return [rows.timeline_entry(r) for r in tx.all("timeline", run_id=run_id)]

    def status_changes_after(self, after: int, limit: int) -> list[TimelineEntry]:
        """Up to ``limit`` timeline entries of any run after entry ``after`` that
        change a run's status (``run.queued`` ... ``run.cancelled``, and
        ``attempt.started``), with the ``attempt.failed`` entries whose errors
        they give, oldest first."""
        with self.db.read() as tx:
            return [rows.timeline_entry(r)
                    for r in tx.all("status_changes_after", after=after, limit=limit)]

    def last_timeline_id(self) -> int:
        """The id of the newest timeline entry of any run (0 for none)."""
        with self.db.read() as tx:
            return _last_timeline_id(tx)

    def newest_runs_and_last_entry(self, limit: int) -> tuple[list[Run], int]:
        """The newest ``limit`` runs, newest first, and :meth:`last_timeline_id`,
        read together: the entries after that id are the changes since."""
        with self.db.read() as tx:
            found = tx.raw("SELECT * FROM runs ORDER BY id DESC LIMIT :limit", {"limit": limit})
            return [rows.run(r) for r in found], _last_timeline_id(tx)

    def latest_timeline(self, run_id: str, limit: int) -> tuple[list[TimelineEntry], int]:
        """The run's last ``limit`` timeline entries, in the order of
        :meth:`timeline`, and how many it has before them. Reads those only."""
        with self.db.read() as tx:
            load_run(tx, run_id)
            return _latest(tx, rows.timeline_entry, limit, "latest_timeline", "count_timeline",
                           run_id)

    def timeline_outline(self, run_id: str, steps: int) -> tuple[list[TimelineEntry], int]:
        """What the dashboard's waterfall, which draws a run's latest rows, reads of
        a run that loops over thousands of steps or pauses: the run's timeline, in
        the order of :meth:`timeline`, with the entries of its last ``steps`` steps
        (``step.completed``, ``step.failed``) and everything after the first of
        them, and how many rows it leaves out.

        Before that first step, the entries of the steps and of the pauses
        (``run.waiting`` and what ends a pause: ``run.resumed``, ``event.received``,
        ``wait.timed_out``, ``run.queued`` from waiting) are left out; the rows
        left out are those steps, and the sleeps and waits those pauses began
        (a ``run.waiting``, or an event a wait took without pausing). What
        began and ended the attempts is kept.
        """
        with self.db.read() as tx:
            load_run(tx, run_id)
            found, earlier_steps = _latest(tx, lambda r: r, steps, "latest_step_entries",
                                           "count_step_entries", run_id)
            if len(found) < steps or not found:  # all the steps, or none
                outline = tx.all("timeline_outline", run_id=run_id)
                return _in_order([*outline, *found]), earlier_steps
            since = {"run_id": run_id, "at": found[0]["at"], "id": found[0]["id"]}
            pauses = tx.all("pauses_before", **since)
            outline = tx.all("timeline_outline_since", **since)
        return _in_order([*outline, *found]), earlier_steps + _pause_rows(pauses)

    def logs(self, run_id: str, after: int = 0, limit: int | None = None) -> list[LogEntry]:
        """The run's log records with an id over ``after``, oldest first; the first
        ``limit`` of them, if given."""
        with self.db.read() as tx:
            load_run(tx, run_id)
            return [rows.log_entry(r) for r in tx.all(
                "logs", run_id=run_id, after=after, limit=_ALL if limit is None else limit)]

    def latest_logs(self, run_id: str, limit: int,
                    count_earlier: bool = True) -> tuple[list[LogEntry], int]:
        """The run's last ``limit`` log records, oldest first, and how many it has
        before them (0 unless ``count_earlier``). Reads those records only,
        however many the run logged."""
        with self.db.read() as tx:
            load_run(tx, run_id)
            entries = [rows.log_entry(r) for r in reversed(
                tx.all("latest_logs", run_id=run_id, limit=limit))]
            if len(entries) < limit or not count_earlier:
                return entries, 0
            earlier = tx.all("count_logs_before", run_id=run_id, before=entries[0].id)
            return entries, int(earlier[0]["n"])

    def attempts(self, run_id: str) -> list[Attempt]:
        with self.db.read() as tx:
            load_run(tx, run_id)
            return [rows.attempt(r) for r in tx.all("attempts", run_id=run_id)]

    def steps(self, run_id: str) -> list[Step]:
        with self.db.read() as tx:
            load_run(tx, run_id)
            return [rows.step(r) for r in tx.all("steps", run_id=run_id)]

    def latest_steps(self, run_id: str, limit: int) -> tuple[list[Step], int]:
        """The run's last ``limit`` steps, in the order of :meth:`steps`, and how
        many it has before them. Reads those steps only."""
        with self.db.read() as tx:
            load_run(tx, run_id)
            return _latest(tx, rows.step, limit, "latest_steps", "count_steps", run_id)


def _run_filter(filters: RunFilter) -> tuple[list[str], dict[str, Any]]:
    """The conditions (fixed column comparisons) and parameters of ``filters``."""
    where: list[str] = []
    params: dict[str, Any] = {}
    for column in ("status", "job", "queue", "idempotency_key"):
        value = getattr(filters, column)
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    if filters.correlation_key is not None:
        where.append("id IN (SELECT run_id FROM run_correlations WHERE correlation_key = :ck)")
        params["ck"] = filters.correlation_key
    if filters.search is not None:
        where.append("(id = :search OR idempotency_key = :search)")
        params["search"] = filters.search
    for bound, compared in (("created_after", ">="), ("created_before", "<")):
        value = getattr(filters, bound)
        if value is not None:
            where.append(f"created_at {compared} :{bound}")
            params[bound] = value
    return where, params
