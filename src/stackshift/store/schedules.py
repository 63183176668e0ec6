"""Recurring schedules: stored definitions and the firing of due ticks.

A tick starts its run in the same transaction that moves the schedule past the
tick, and the run's idempotency key is ``schedule:<id>:<tick>``: however many
workers maintain at once (every SQLite worker does; on PostgreSQL the elected
leader, and briefly two during a change of leader), each tick starts one run.
PostgreSQL maintainers also skip schedules another one is firing
(``FOR UPDATE SKIP LOCKED``).

Overlap: a schedule made with ``overlap="skip"`` starts no run for a tick
while the run of its previous tick has not finished (completed, failed or
cancelled); the schedule moves on to its next tick and counts the tick in
``skipped_ticks``. The default, ``"allow"``, starts a run for every tick.

Missed ticks: when a schedule is found with several ticks due (everything was
down), only the most recent due tick starts a run; the earlier ones are counted
in ``missed_ticks`` and skipped. Counting them can take a good part of a second
per schedule after a long outage: a round fires the schedules it could count
within :data:`COUNT_BUDGET` (at least one), and leaves the others due for the
next round, so that maintenance, and the lease renewals of a worker's heartbeat
that runs it, are never held up long by a catch-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from ..durations import to_datetime
from ..engine.cron import Cron, parse_cron
from ..errors import IdempotencyConflictError, ScheduleNotFoundError, StackShiftError
from ..ids import new_id, unknowable_id
from ..models import RunError, Schedule
from ..serialization import dumps, loads
from ..wording import quoted
from .base import NewRun
from .database import Database, Row, Tx
from .runs import add_timeline, insert_run

#: How long a tick's idempotency key is kept: far longer than any two
#: maintainers could race on one tick.
TICK_KEY_TTL = 86400.0

#: Seconds of missed-tick counting a round of :meth:`ScheduleStore.fire_schedules`
#: does at most, past the first schedule counted: the rest waits for the next round.
COUNT_BUDGET = 0.05

#: Seconds after which a schedule whose expression or zone could not be read
#: (a zone missing from this host's time zone database) is tried again.
UNREADABLE_RETRY = 60.0


def tick_key(schedule_id: str, tick: float) -> str:
    moment = datetime.fromtimestamp(tick, UTC).isoformat().replace("+00:00", "Z")
    return f"schedule:{schedule_id}:{moment}"


def schedule(row: Row) -> Schedule:
    error = loads(row["last_error"]) if row["last_error"] else None
    if error is None and row["last_run_status"] == "failed" and row["last_run_error"]:
        error = loads(row["last_run_error"])
    return Schedule(
        id=row["id"],
        job=row["job"],
        cron=row["cron"],
        timezone=row["timezone"],
        payload=loads(row["payload"]),
        queue=row["queue"],
        source=row["source"],
        paused=bool(row["paused"]),
        next_run_at=to_datetime(row["next_run_at"]) if not row["paused"] else None,
        last_run_at=to_datetime(row["last_tick_at"]),
        last_run_id=row["last_run_id"],
        last_run_status=row["last_run_status"],
        last_error=RunError.from_dict(error),
        missed_ticks=int(row["missed_ticks"]),
        overlap=row["overlap"],
        skipped_ticks=int(row["skipped_ticks"]),
        created_at=to_datetime(row["created_at"]),  # type: ignore[arg-type]
    )


def _detail(tx: Tx, schedule_id: str) -> Schedule:
    row = tx.one("get_schedule_detail", id=schedule_id)
    if row is None:
        raise ScheduleNotFoundError(f"no schedule with id {quoted(schedule_id)}")
    return schedule(row)


class ScheduleStore:
    db: Database

    def create_schedule(self, schedule_id: str, job: str, cron: Cron, payload: str,
                        queue: str | None, source: str, now: float,
                        overlap: str = "allow") -> Schedule:
        with self.db.write() as tx:
            tx.run("insert_schedule", id=schedule_id, job=job, cron=cron.expression,
                   timezone=cron.timezone, payload=payload, queue=queue, overlap=overlap,
                   source=source, next_run_at=cron.next_after(now), now=now)
            return _detail(tx, schedule_id)

    def put_schedule(self, schedule_id: str, job: str, cron: Cron, payload: str,
                     queue: str | None, now: float,
                     overlap: str = "allow") -> tuple[Schedule, bool]:
        """Create the schedule ``schedule_id``, or make the existing one this
        definition: a new expression or time zone restarts its ticks from ``now``;
        a new job, payload, queue or overlap policy applies from its next tick; a
        pause is kept. The schedule, and whether it was created."""
        with self.db.write() as tx:
            created = tx.run("insert_schedule", id=schedule_id, job=job, cron=cron.expression,
                             timezone=cron.timezone, payload=payload, queue=queue,
                             overlap=overlap, source="api", next_run_at=cron.next_after(now),
                             now=now) > 0
            row = tx.one("lock_schedule", id=schedule_id)
            assert row is not None  # inserted, or there already
            wanted = (job, cron.expression, cron.timezone, payload, queue, overlap)
            if (row["job"], row["cron"], row["timezone"], row["payload"], row["queue"],
                    row["overlap"]) != wanted:
                next_at = row["next_run_at"]
                if (row["cron"], row["timezone"]) != (cron.expression, cron.timezone):
                    next_at = cron.next_after(now)
                tx.run("update_schedule", id=schedule_id, job=job, cron=cron.expression,
                       timezone=cron.timezone, payload=payload, queue=queue, overlap=overlap,
                       next_run_at=next_at, now=now)
            return _detail(tx, schedule_id), created

    def get_schedule(self, schedule_id: str) -> Schedule:
        if unknowable_id(schedule_id):
            raise ScheduleNotFoundError(f"no schedule with id {quoted(schedule_id)}")
        with self.db.read() as tx:
            return _detail(tx, schedule_id)

    def list_schedules(self) -> list[Schedule]:
        with self.db.read() as tx:
            return [schedule(r) for r in tx.all("list_schedules")]

    def set_schedule_paused(self, schedule_id: str, paused: bool, now: float) -> Schedule:
        """Pause, or resume from now on (ticks that passed while paused are skipped)."""
        if unknowable_id(schedule_id):
            raise ScheduleNotFoundError(f"no schedule with id {quoted(schedule_id)}")
        with self.db.write() as tx:
            row = tx.one("lock_schedule", id=schedule_id)
            if row is None:
                raise ScheduleNotFoundError(f"no schedule with id {quoted(schedule_id)}")
            next_at = row["next_run_at"]
            if not paused and row["paused"]:
                next_at = parse_cron(row["cron"], row["timezone"], stored=True).next_after(now)
            tx.one("set_schedule_paused", id=schedule_id, paused=1 if paused else 0,
                   next_run_at=next_at, now=now)
            return _detail(tx, schedule_id)

    def delete_schedule(self, schedule_id: str) -> bool:
        if unknowable_id(schedule_id):
            return False
        with self.db.write() as tx:
            return tx.run("delete_schedule", id=schedule_id) > 0

    def sync_code_schedules(self, wanted: Mapping[str, tuple[str, Cron, str | None, str]],
                            unwanted: list[str], now: float) -> None:
        """Make the ``code`` schedules match the jobs a worker serves.

        ``wanted`` maps schedule id to ``(job, cron, queue, overlap)``;
        ``unwanted`` lists ids of jobs served without a cron, whose code schedule
        is removed. A changed expression restarts the ticks from ``now``; a new
        queue or overlap policy applies from the next tick; a pause is kept.
        """
        with self.db.write() as tx:
            for schedule_id, (job, cron, queue, overlap) in sorted(wanted.items()):
                row = tx.one("get_schedule", id=schedule_id)
                if row is None:
                    tx.run("insert_schedule", id=schedule_id, job=job, cron=cron.expression,
                           timezone=cron.timezone, payload="null", queue=queue,
                           overlap=overlap, source="code", next_run_at=cron.next_after(now),
                           now=now)
                elif (row["cron"], row["timezone"], row["queue"], row["overlap"]) != (
                        cron.expression, cron.timezone, queue, overlap):
                    next_at = row["next_run_at"]
                    if (row["cron"], row["timezone"]) != (cron.expression, cron.timezone):
                        next_at = cron.next_after(now)
                    tx.run("update_code_schedule", id=schedule_id, cron=cron.expression,
                           timezone=cron.timezone, queue=queue, overlap=overlap,
                           next_run_at=next_at, now=now)
            for schedule_id in unwanted:
                row = tx.one("get_schedule", id=schedule_id)
                if row is not None and row["source"] == "code":
                    tx.run("delete_schedule", id=schedule_id)

    def next_schedule_tick(self) -> float | None:
        """When the next tick of an active schedule is due (epoch seconds), if any."""
        with self.db.read() as tx:
            row = tx.one("next_schedule_tick")
        return None if row is None or row["due"] is None else float(row["due"])

    def fire_schedules(self, now: float, make_run: Callable[[Row, float], NewRun],
                       limit: int = 100) -> list[str]:
        """Start one run for each due schedule (its latest due tick); return run ids.

        ``make_run(schedule_row, tick)`` builds the run to start (the service
        decides queue and defaults). A tick that cannot start a run records
        why in ``last_error`` and the schedule moves on to its next tick.
        """
        started: list[str] = []
        with self.db.read() as tx:
            # A read first: maintenance runs every fraction of a second, and on
            # SQLite a write transaction would take the database's write lock.
            found = tx.all("peek_due_schedules", now=now, limit=limit)
        if not found:
            return started
        # Catching up after a long outage counts the missed ticks one by one (up
        # to MAX_COUNTED, a good part of a second): done before the write
        # transaction, so that it does not hold the write lock meanwhile, and
        # within COUNT_BUDGET, so that it does not hold up the caller's round.
        counted = _count_missed(found, now, COUNT_BUDGET)
        with self.db.write() as tx:
            for row in tx.all("due_schedules", now=now, limit=len(counted)):
                due = float(row["next_run_at"])
                key = (row["id"], row["cron"], row["timezone"], due)
                if key not in counted:
                    continue  # not counted (changed since the read): next round
                tick, missed, skipped, next_at = due, 0, 0, None
                run_id = row["last_run_id"]
                error: dict[str, Any] | None = None
                try:
                    cron = parse_cron(row["cron"], row["timezone"], stored=True)
                    known = counted[key]
                    tick, missed = known if known is not None else cron.latest_due(due, now)
                    next_at = cron.next_after(now)
                    if tick == due and row["last_error"] and cron.next_after(due - 1) != due:
                        # Due at a retry (UNREADABLE_RETRY), not at a tick, and no tick
                        # since: read at last, the schedule goes on from its next tick.
                        tick = row["last_tick_at"]
                    elif (row["overlap"] == "skip" and run_id is not None
                            and tx.one("schedule_run_unfinished", id=run_id) is not None):
                        # The previous tick's run is still going: this tick starts
                        # none; last_run_at and last_error stay (no run, no failure).
                        # That run's timeline says which tick it held back.
                        add_timeline(tx, run_id, "schedule.tick_skipped", now,
                                     schedule_id=row["id"], tick_at=tick)
                        skipped, tick = 1, row["last_tick_at"]
                        error = loads(row["last_error"]) if row["last_error"] else None
                    else:
                        run = insert_run(tx, make_run(row, tick), now)
                        run_id = run.id
                        if run.created:
                            started.append(run.id)
                except (StackShiftError, IdempotencyConflictError, ValueError, TypeError) as exc:
                    error = {"type": type(exc).__name__, "message": str(exc)}
                    if next_at is None:  # not read here: again later, here or elsewhere
                        # (no tick fired: last_run_at stays)
                        next_at, tick = now + UNREADABLE_RETRY, row["last_tick_at"]
                tx.run("schedule_fired", id=row["id"], due=due, next_run_at=next_at, tick=tick,
                       run_id=run_id, error=dumps(error) if error else None, missed=missed,
                       skipped=skipped, now=now)
        return started


def _count_missed(rows: list[Row], now: float, budget: float
                  ) -> dict[tuple[str, str, str, float], tuple[float, int] | None]:
    """``(tick, missed)`` of :meth:`Cron.latest_due` for due schedules, by their
    ``(id, cron, timezone, due tick)``: what the write transaction would compute.

    Counts the first schedule, then the next ones while ``budget`` seconds have
    not passed; the rest are left out (fired by a later round). None for one
    whose expression fails: the write transaction meets the error again and
    records it.
    """
    counted: dict[tuple[str, str, str, float], tuple[float, int] | None] = {}
    stop = time.monotonic() + budget
    for row in rows:
        if counted and time.monotonic() >= stop:
            break
        due = float(row["next_run_at"])
        key = (row["id"], row["cron"], row["timezone"], due)
        try:
            cron = parse_cron(row["cron"], row["timezone"], stored=True)
            counted[key] = cron.latest_due(due, now)
        except (StackShiftError, ValueError, TypeError):
            counted[key] = None
    return counted


def new_schedule_id() -> str:
    return new_id("sch")


def code_schedule_id(job: str) -> str:
    """The id of the schedule ``@job(name, cron=...)`` defines: one per job."""
    return f"job:{job}"
