"""A worker keeps the leases of the runs it executes, and only those.

When the end of an attempt cannot be recorded (here the database refuses it,
as it might when its connection drops at that moment), the worker no longer
executes the run and must stop renewing its lease, so that the run is rescued
and finished by another attempt instead of staying ``running`` for as long as
the worker lives.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from test_schedules import hold_a_long_run, lease_lapsed

from stackshift import StackShift
from stackshift.worker import Worker

pytestmark = pytest.mark.slow

REFUSE_FIRST_COMPLETION = {
    "sqlite": [
        """CREATE TRIGGER refuse_first_completion BEFORE UPDATE OF status ON runs
           WHEN NEW.status = 'completed' AND OLD.attempt = 1
           BEGIN SELECT RAISE(ABORT, 'refused for the test'); END""",
    ],
    "postgres": [
        """CREATE FUNCTION refuse_first_completion() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'refused for the test'; END $$""",
        """CREATE TRIGGER refuse_first_completion BEFORE UPDATE OF status ON runs
           FOR EACH ROW WHEN (NEW.status = 'completed' AND OLD.attempt = 1)
           EXECUTE FUNCTION refuse_first_completion()""",
    ],
}


def test_a_run_whose_ending_could_not_be_recorded_is_rescued_and_finished(
        db_url: str) -> None:
    app = StackShift(db_url)
    dialect = app._service.store.dialect
    with app._service.store.db.write() as tx:
        for statement in REFUSE_FIRST_COMPLETION[dialect]:
            tx.raw(statement, {})

    @app.job("short", backoff={"base": "0.05s"})
    def short(ctx: Any) -> int:
        return int(ctx.step.run("one", lambda: 1))

    try:
        run = app.start("short")
        with app.worker(lease="1s", maintenance_interval="0.05s"):
            done = app.runs.wait(run.id, timeout=15)
        assert done.status == "completed"
        assert done.result == 1
        attempts = app.runs.attempts(run.id)
        assert [a.status for a in attempts] == ["failed", "completed"]
        assert attempts[0].error is not None and attempts[0].error.type == "WorkerLost"
    finally:
        app.close()


def test_a_slow_maintenance_round_does_not_hold_up_lease_renewals(db_url: str) -> None:
    """Maintenance (due runs, timers, schedules, retention) and lease renewal are
    separate threads: while a maintenance round takes four times the lease (a
    database slow to answer, a large backlog to promote), the running attempt's
    lease is still renewed, so the attempt is never found expired and retried."""
    slow = threading.Event()

    class SlowMaintenance(Worker):
        def maintain(self) -> int:
            changed = super().maintain()
            if slow.is_set():
                time.sleep(6.0)
            return changed

    app = StackShift(db_url)
    try:
        release, attempts = hold_a_long_run(app)
        run = app.start("long")
        worker = SlowMaintenance(app, lease="1.5s").start()
        try:
            started = time.time()
            while not attempts:
                assert time.time() - started < 30
                time.sleep(0.01)
            slow.set()  # from the next round on, each takes 6 s
            lapses: list[float] = []
            watch_until = time.time() + 8.0
            while time.time() < watch_until:
                if lease_lapsed(db_url, run.id):
                    lapses.append(time.time() - started)
                time.sleep(0.05)
            release.set()
            slow.clear()
            finished = app.runs.wait(run.id, timeout=30)
        finally:
            release.set()
            slow.clear()
            worker.stop()
        assert lapses == []  # never past its lease while maintenance was slow
        assert finished.status == "completed" and finished.attempt == 1 and attempts == [1]
    finally:
        app.close()
