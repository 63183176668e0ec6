"""Every connection of a client and its worker is cut at once: both carry on.

The server ends the sessions (``pg_terminate_backend``), as it does when a
network link drops or an administrator intervenes. The next calls move to new
connections by themselves, the worker keeps claiming (its LISTEN connection
and its leadership come back), and a run started afterwards still starts at
once and completes. No call made after the cut fails.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
from cluster import POSTGRES_URL

from stackshift import StackShift


def terminate(application_name: str) -> int:
    """End the sessions of ``application_name``; how many ended. Each is waited
    for (up to 5 s) until it is gone, so that the cut is over when this returns
    (without the wait, a statement sent at once may reach a session still
    ending, which is a cut during the call, not before it)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) AS ended FROM pg_stat_activity"
            " WHERE application_name = %s", (application_name,)
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


def test_client_and_worker_carry_on_after_their_connections_are_cut(pg_url: str) -> None:
    name = f"drop_{uuid.uuid4().hex[:8]}"
    app = StackShift(f"{pg_url}&application_name={name}&pool_min=2")
    other = StackShift(pg_url)  # another process's client: it can only wake the worker by NOTIFY

    @app.job("double")
    def double(ctx: Any) -> int:
        return 2 * int(ctx.step.run("read", lambda: ctx.payload["n"]))

    try:
        with app.worker(concurrency=4, queues=["default"], poll_interval="5s",
                        maintenance_interval="0.05s"):
            first = other.start("double", {"n": 1})
            assert app.runs.wait(first.id, timeout=10).result == 2
            # The pool, the LISTEN connection and the leader connection are all open.
            assert terminate(name) >= 3

            started = time.monotonic()
            later = [other.start("double", {"n": n}) for n in range(2, 7)]
            results = [app.runs.wait(run.id, timeout=10).result for run in later]
            assert results == [4, 6, 8, 10, 12]
            # Quicker than the 5 s poll: notifications reach the worker again.
            assert time.monotonic() - started < 4
            assert app.state.increment("after-the-cut") == 1

            # Maintenance is back too: a run whose worker vanished is rescued. (It is
            # in a queue this worker does not serve, so only the vanished one had it.)
            lost = other.start("double", {"n": 7}, queue_name="elsewhere")
            other._service.store.claim_runs("vanished", ["double"], 1, 0.2, time.time())
            deadline = time.monotonic() + 10
            while app.runs.get(lost.id).status == "running" and time.monotonic() < deadline:
                time.sleep(0.05)
            attempts = app.runs.attempts(lost.id)
            assert [a.status for a in attempts] == ["failed"]
            assert attempts[0].error is not None and attempts[0].error.type == "WorkerLost"
    finally:
        app.close()
        other.close()


def test_a_duplicate_start_after_the_cut_returns_the_run_and_notes_it_once(
        pg_url: str) -> None:
    # A duplicate start is one statement sent without BEGIN: the cut is found out
    # by that statement, which moves to a new connection by itself.
    name = f"drop_{uuid.uuid4().hex[:8]}"
    app = StackShift(f"{pg_url}&application_name={name}&pool_min=2")
    try:
        first = app.start("double", {"n": 1}, idempotency_key="order-1")
        assert not app.start("double", {"n": 1}, idempotency_key="order-1").created
        assert terminate(name) >= 2
        again = app.start("double", {"n": 1}, idempotency_key="order-1")
        assert (again.id, again.created) == (first.id, False)
        kinds = [e.kind for e in app.runs.timeline(first.id)]
        assert kinds.count("run.duplicate_start") == 2
    finally:
        app.close()


def test_a_start_after_the_cut_creates_its_run_once(pg_url: str) -> None:
    # A start without a key is one statement sent without BEGIN; its connection
    # is checked first, so the cut is found out before the statement is sent
    # and the start moves to a new connection instead of failing.
    name = f"drop_{uuid.uuid4().hex[:8]}"
    app = StackShift(f"{pg_url}&application_name={name}&pool_min=2")
    try:
        before = app.start("double", {"n": 1})
        assert terminate(name) >= 2
        after = app.start("double", {"n": 2})
        assert after.created and after.id != before.id
        found = {run.id for run in app.runs.list(job="double").items}
        assert found == {before.id, after.id}
    finally:
        app.close()


def test_a_checkpoint_cut_off_midway_is_made_again_and_costs_the_attempt_nothing(
        pg_url: str) -> None:
    """The connection of a step's checkpoint ends while its statement waits (here
    on a row lock an administrator holds): the worker makes the checkpoint again
    on a new connection, and the run goes on in the same attempt, with its one
    attempt allowed, each step run once."""
    name = f"cut_{uuid.uuid4().hex[:8]}"
    app = StackShift(f"{pg_url}&application_name={name}")
    in_step, locked = threading.Event(), threading.Event()
    ran: list[str] = []

    @app.job("twoSteps", max_attempts=1)
    def two_steps(ctx: Any) -> str:
        def first() -> int:
            ran.append("first")
            in_step.set()
            assert locked.wait(10)
            return 1

        ctx.step.run("first", first)
        ctx.step.run("second", lambda: ran.append("second") or 2)
        return "done"

    try:
        with app.worker(concurrency=1), psycopg.connect(POSTGRES_URL) as admin:
            run = app.start("twoSteps")
            assert in_step.wait(10)
            schema = pg_url.rsplit("schema=", 1)[1]
            admin.execute(f'SELECT 1 FROM "{schema}".runs WHERE id = %s FOR UPDATE', (run.id,))
            locked.set()
            deadline = time.monotonic() + 10
            cut = 0
            while not cut and time.monotonic() < deadline:  # the checkpoint waits on the row
                cut = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s AND wait_event_type = 'Lock'",
                    (name,)).fetchone()[0]
                time.sleep(0.02)
            assert cut == 1
            admin.rollback()  # the row is free again
            done = app.runs.wait(run.id, timeout=15)
        assert (done.status, done.result, done.attempt) == ("completed", "done", 1)
        assert ran == ["first", "second"]
        assert [a.status for a in app.runs.attempts(run.id)] == ["completed"]
    finally:
        app.close()



def test_the_schema_version_a_health_check_reads_is_read_after_the_cut(pg_url: str) -> None:
    # GET /healthz reads it: it answered 503 once for each dead pooled connection
    # while the database answered every other request.
    name = f"drop_{uuid.uuid4().hex[:8]}"
    app = StackShift(f"{pg_url}&application_name={name}&pool_min=4")
    db = app._service.store.db
    try:
        version = db.schema_version()
        held = [db._getconn() for _ in range(4)]  # the pool holds four connections
        for conn in held:
            db._pool.putconn(conn)
        assert terminate(name) >= 4
        assert [db.schema_version() for _ in range(6)] == [version] * 6
    finally:
        app.close()


def test_a_pool_of_idle_connections_all_cut_moves_to_new_ones_within_pool_timeout(
        pg_url: str) -> None:
    """Idle sessions ended all at once (``idle_session_timeout``, a firewall, a
    script): the next call finds out the others beside the first dead one at
    once, rather than one failed transaction and pause each, so it succeeds
    well within a ``pool_timeout`` that twelve pauses would exceed."""
    name = f"drop_{uuid.uuid4().hex[:8]}"
    app = StackShift(f"{pg_url}&application_name={name}&pool_size=12&pool_min=12"
                     "&pool_timeout=2")
    try:
        app.state.set("before", 1)
        deadline = time.monotonic() + 10
        while session_count(name) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)  # the pool opens its twelve in the background
        assert terminate(name) == 12
        for n in range(3):
            assert app.state.increment("after-the-cut") == n + 1
            assert app.start("noted", {"n": n}).status == "queued"
    finally:
        app.close()


def session_count(application_name: str) -> int:
    """How many sessions ``application_name`` has open."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (application_name,)).fetchone()
    return int(row[0]) if row else 0
