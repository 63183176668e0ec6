"""Events, waits and timers: how a paused run is matched and woken.

Matching a wait with an event must not race: a wait that checks for early
events and an event that checks for waiters could each miss the other. SQLite
serialises all writers, so it cannot happen there; on PostgreSQL both sides take
the same transaction-scoped advisory lock on (event name, correlation key)
first (``Tx.lock``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..engine.transitions import Status
from ..errors import IdempotencyConflictError
from ..models import Event, SentEvent
from ..serialization import dumps, loads
from . import rows
from .base import Lease, LogWrite, StepWrite
from .database import Database, Row, Tx
from .execution import ExecutionStore, renew, write_logs, write_step
from .runs import add_timeline, fingerprints, move_run, waiting_data


def event_json(event: Event) -> str:
    """How a received event is stored as the result of a wait step."""
    return dumps(
        {
            "id": event.id,
            "name": event.name,
            "payload": event.payload,
            "correlation_key": event.correlation_key,
            "received_at": event.received_at.timestamp(),
            "idempotency_key": event.idempotency_key,
        }
    )


def _take(tx: Tx, row: Row, event: Event, step_key: str, now: float) -> None:
    tx.run("insert_consumption", run_id=row["id"], event_id=event.id, step_key=step_key, now=now)
    add_timeline(tx, row["id"], "event.received", now, attempt=row["attempt"] or None,
                 step=step_key, event_id=event.id, event=event.name)


class EventStore(ExecutionStore):
    db: Database

    def wait_for_event(
        self,
        lease: Lease,
        step: StepWrite,
        name: str,
        correlation_key: str,
        timeout_at: float,
        on_timeout: str,
        logs: Sequence[LogWrite],
        now: float,
        lease_seconds: float,
    ) -> Event | None:
        """Take a matching early event now, or park the run until one comes.

        An early event is one received at or after the run's creation as stored
        (not as the worker read it back: a datetime rounds to the microsecond).

        Returns the event taken (the step is completed with it), or ``None`` when
        the run is now waiting and the invocation must end.
        """
        with self.db.write() as tx:
            # A run asked to cancel takes no event: _suspend cancels it.
            cancel = renew(tx, lease, now, lease_seconds)
            taken = _taken_already(tx, lease.run_id, step.key)
            if taken is not None:
                # A try whose answer was lost (a connection cut at its commit) took
                # this event: the same one again, not a second.
                return taken
            tx.lock(f"event:{name}\x00{correlation_key}")
            if correlation_key and not cancel:
                tx.run("note_correlation", correlation_key=correlation_key,
                       run_id=lease.run_id)
            found = None if cancel else tx.one(
                "oldest_unconsumed_event",
                name=name,
                correlation_key=correlation_key,
                run_id=lease.run_id,
                now=now,
            )
            if found is not None:
                event = rows.event(found)
                run = tx.one("get_run", id=lease.run_id)
                assert run is not None
                _take(tx, run, event, step.key, now)
                write_step(tx, lease.run_id, lease.attempt, StepWrite(
                    key=step.key, name=step.name, kind="wait", function=None,
                    status="completed", result=event_json(event), error=None,
                    started_at=step.started_at, finished_at=now,
                ))
                write_logs(tx, lease.run_id, logs)
                return event
            waiting = {
                "kind": "event",
                "step": step.key,
                "event": name,
                "correlation_key": correlation_key or None,
                "until": timeout_at,
            }
            if self._suspend(tx, lease, step, waiting, timeout_at, now):
                tx.run("insert_wait", run_id=lease.run_id, step_key=step.key, event_name=name,
                       correlation_key=correlation_key, now=now, timeout_at=timeout_at,
                       on_timeout=on_timeout)
                add_timeline(tx, lease.run_id, "run.waiting", now, attempt=lease.attempt,
                             step=step.key,
                             data={"from": "running", **waiting_data(waiting)})
            write_logs(tx, lease.run_id, logs)
            return None

    def send_event(
        self,
        event_id: str,
        name: str,
        payload: str,
        correlation_key: str,
        idempotency_key: str | None,
        now: float,
        retention: float,
        dedupe_window: float,
    ) -> SentEvent:
        """Store the event and resume every run waiting for its name and key.

        A repeat of a live idempotency key resumes nothing and answers with the
        first event's id and the runs its send resumed (none once that event is
        past its retention). Either way the run ids come in id order.
        """
        with self.db.write() as tx:
            if idempotency_key is not None:
                # Name, key and payload, compared as a start's job and payload are.
                print_, earlier = fingerprints(f"{name}\n{correlation_key}", payload)
                taken = tx.one(
                    "claim_idempotency_key",
                    scope="event",
                    key=idempotency_key,
                    target_id=event_id,
                    fingerprint=print_,
                    now=now,
                    expires_at=now + dedupe_window,
                )
                if taken is None:
                    first = tx.one("get_idempotency_key", scope="event", key=idempotency_key)
                    assert first is not None
                    if first["fingerprint"] not in (print_, earlier):
                        raise IdempotencyConflictError(
                            f"idempotency key {idempotency_key!r} belongs to event"
                            f" {first['target_id']} with a different name, correlation key"
                            " or payload",
                            existing_event_id=first["target_id"],
                        )
                    resumed_first = tx.all("runs_resumed_by_event",
                                           event_id=first["target_id"], now=now)
                    return SentEvent(first["target_id"], True,
                                     [row["run_id"] for row in resumed_first])
            if tx.dialect == "postgres":
                return self._deliver_postgres(tx, event_id, name, payload, correlation_key,
                                              idempotency_key, now, retention)
            tx.lock(f"event:{name}\x00{correlation_key}")
            tx.run("insert_event", id=event_id, name=name, correlation_key=correlation_key,
                   payload=payload, idempotency_key=idempotency_key, now=now,
                   expires_at=now + retention)
            event = rows.event(tx.one("get_event", id=event_id))  # type: ignore[arg-type]
            resumed: list[str] = []
            for wait in tx.all("matching_waits", name=name, correlation_key=correlation_key,
                               now=now):
                run = tx.one("get_run", id=wait["run_id"])
                assert run is not None
                _take(tx, run, event, wait["step_key"], now)
                tx.run("complete_waiting_step", run_id=run["id"], key=wait["step_key"],
                       result=event_json(event), now=now)
                move_run(tx, run, Status.QUEUED, now, available_at=now, resuming=True,
                         event_id=event_id)
                resumed.append(run["id"])
            return SentEvent(event_id, False, sorted(resumed))

    def _deliver_postgres(self, tx: Tx, event_id: str, name: str, payload: str,
                          correlation_key: str, idempotency_key: str | None, now: float,
                          retention: float) -> SentEvent:
        """PostgreSQL: what send_event does after the idempotency check, in two
        statements: the event's insert, which takes the advisory lock of its name
        and key, then the resume of every run waiting for it."""
        from .postgres import lock_id

        tx.run("insert_event_locked", id=event_id, name=name, correlation_key=correlation_key,
               payload=payload, idempotency_key=idempotency_key, now=now,
               expires_at=now + retention, lock=lock_id(f"event:{name}\x00{correlation_key}"))
        event = rows.event({"id": event_id, "name": name, "payload": payload,
                            "correlation_key": correlation_key, "received_at": now,
                            "idempotency_key": idempotency_key})
        resumed = tx.all(
            "resume_for_event", name=name, correlation_key=correlation_key, now=now,
            event_id=event_id, result=event_json(event),
            received_data=dumps({"event": name, "event_id": event_id}),
            queued_data=dumps({"event_id": event_id, "from": Status.WAITING.value}))
        return SentEvent(event_id, False, [row["id"] for row in resumed])

    def get_event(self, event_id: str, now: float) -> tuple[Event, list[dict[str, Any]]] | None:
        """An event and the runs that took it; ``None`` once past its retention (no
        wait takes it then either), whether or not clean-up has deleted it yet."""
        with self.db.read() as tx:
            row = tx.one("get_event", id=event_id)
            if row is None or row["expires_at"] <= now:
                return None
            takers = [dict(r) for r in tx.all("consumers_of_event", event_id=event_id)]
        return rows.event(row), takers

    def list_events(self, name: str | None, correlation_key: str | None, limit: int,
                    cursor: str | None, now: float) -> tuple[list[Event], str | None]:
        """Events within their retention at ``now``, newest first."""
        where: list[str] = ["expires_at > :now"]
        params: dict[str, Any] = {"limit": limit + 1, "now": now}
        if name is not None:
            where.append("name = :name")
            params["name"] = name
        if correlation_key is not None:
            where.append("correlation_key = :ck")
            params["ck"] = correlation_key
        if cursor is not None:
            where.append("id < :cursor")
            params["cursor"] = cursor
        sql = "SELECT * FROM events WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT :limit"
        with self.db.read() as tx:
            found = tx.raw(sql, params)
        items = [rows.event(r) for r in found[:limit]]
        return items, (items[-1].id if len(found) > limit and items else None)

    def fire_timers(self, now: float, limit: int = 500) -> list[str]:
        """Wake sleeping runs whose time came and apply wait timeouts. Returns run ids."""
        fired: list[str] = []
        with self.db.write() as tx:
            for row in tx.all("due_timers", now=now, limit=limit):
                waiting = loads(row["waiting_for"]) or {}
                step_key = waiting.get("step")
                if waiting.get("kind") == "sleep":
                    tx.run("complete_waiting_step", run_id=row["id"], key=step_key,
                           result="null", now=now)
                    move_run(tx, row, Status.QUEUED, now, available_at=now, resuming=True,
                             woke=step_key)
                else:
                    self._time_out_wait(tx, row, step_key, now)
                fired.append(row["id"])
        return fired

    def _time_out_wait(self, tx: Tx, row: Row, step_key: str | None, now: float) -> None:
        wait = tx.one("get_wait", run_id=row["id"])
        on_timeout = wait["on_timeout"] if wait else "fail"
        add_timeline(tx, row["id"], "wait.timed_out", now, attempt=row["attempt"] or None,
                     step=step_key, on_timeout=on_timeout)
        if on_timeout == "continue":
            tx.run("complete_waiting_step", run_id=row["id"], key=step_key, result="null",
                   now=now)
            move_run(tx, row, Status.QUEUED, now, available_at=now, resuming=True)
            return
        if on_timeout == "cancel":
            target, error = Status.CANCELLED, {
                "type": "Cancelled",
                "message": f"no {waiting_label(row)} event arrived before the timeout",
                "traceback": None}
        else:
            target, error = Status.FAILED, {
                "type": "WaitTimeoutError",
                "message": f"no {waiting_label(row)} event arrived before the timeout",
                "traceback": None,
            }
            # The attempt ends in that error, as any failed attempt is shown.
            add_timeline(tx, row["id"], "attempt.failed", now, attempt=row["attempt"] or None,
                         error={"type": error["type"], "message": error["message"]})
        move_run(tx, row, target, now, error=error)
        tx.run("update_attempt", run_id=row["id"], number=row["attempt"], status=target.value,
               finished_at=now, error=dumps(error))
        tx.run("end_waiting_step", run_id=row["id"], error=dumps(error), now=now)


def waiting_label(row: Row) -> str:
    waiting = loads(row["waiting_for"]) or {}
    key = waiting.get("correlation_key")
    return repr(waiting.get("event")) + (f" (key {key!r})" if key else "")


def _taken_already(tx: Tx, run_id: str, key: str) -> Event | None:
    """The event the wait step ``key`` of the run completed with, if it has."""
    step = tx.one("get_step", run_id=run_id, key=key)
    if step is None or step["status"] != "completed" or step["kind"] != "wait":
        return None
    taken = loads(step["result"])
    found = tx.one("get_event", id=taken["id"]) if isinstance(taken, dict) else None
    return None if found is None else rows.event(found)
