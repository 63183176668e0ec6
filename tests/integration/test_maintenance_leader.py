"""Maintenance (lease rescue, timers, clean-up) runs on one elected process.

On PostgreSQL the leader holds a session advisory lock: one process leads at a
time, and when it dies the server frees the lock and another process takes
over. On SQLite every worker maintains (its writes are serialised anyway).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Processes, cluster_processes

from stackshift import StackShift
from stackshift.store import open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    with cluster_processes(tmp_path) as procs:
        yield procs


def eventually(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def test_one_process_leads_at_a_time_and_another_takes_over_when_it_leaves(
        db_url: str) -> None:
    stores = [open_store(db_url) for _ in range(3)]
    try:
        stores[0].migrate()
        first = [store.try_lead(f"worker-{i}") for i, store in enumerate(stores)]
        if db_url.startswith("sqlite"):
            assert first == [True, True, True]
            return
        assert first == [True, False, False]
        assert stores[0].try_lead("worker-0")  # the leader keeps leading
        assert not stores[0].try_lead("another-worker-same-process")
        assert not stores[1].try_lead("worker-1")

        stores[0].resign("worker-0")
        assert eventually(lambda: stores[1].try_lead("worker-1"), 5)
        assert not stores[2].try_lead("worker-2")

        stores[1].close()  # a leader that goes away without resigning
        assert eventually(lambda: stores[2].try_lead("worker-2"), 5)
    finally:
        for store in stores:
            store.close()


def test_when_the_leading_process_is_killed_another_rescues_the_lost_runs(
        db_url: str, processes: Processes) -> None:
    app = StackShift(db_url)

    @app.job("quick")
    def quick(ctx: Any) -> str:
        return "done"

    try:
        holder = processes.spawn("lead", db_url)
        processes.wait_for(holder, "leading")
        run = app.start("quick")
        store = app._service.store
        # A worker that claimed the run and vanished: its lease expires at once.
        store.claim_runs("ghost-worker", ["quick"], 1, 0.2, app.clock.now())
        with app.worker(lease="2s", maintenance_interval="0.05s"):
            if db_url.startswith("sqlite"):
                # Every SQLite worker maintains: the run is rescued at once.
                assert app.runs.wait(run.id, timeout=10).status == "completed"
                return
            time.sleep(1.5)
            stuck = app.runs.get(run.id)
            assert stuck.status == "running", "a worker that does not lead ran the rescuer"
            processes.kill(holder)
            done = app.runs.wait(run.id, timeout=10)
        assert done.status == "completed"
        attempts = app.runs.attempts(run.id)
        assert [a.status for a in attempts] == ["failed", "completed"]
        assert attempts[0].error is not None and attempts[0].error.type == "WorkerLost"
    finally:
        app.close()


def test_a_leader_that_hangs_loses_the_lead_and_another_rescues_the_lost_runs(
        pg_url: str, processes: Processes) -> None:
    # The holder takes the lead and never calls again: alive, connected, silent,
    # as a stopped process or a frozen machine would be.
    app = StackShift(pg_url)

    @app.job("quick")
    def quick(ctx: Any) -> str:
        return "done"

    try:
        holder = processes.spawn("lead", pg_url, "--silence", "3")
        processes.wait_for(holder, "leading")
        led_at = time.monotonic()
        run = app.start("quick")
        app._service.store.claim_runs("ghost-worker", ["quick"], 1, 0.2, app.clock.now())
        with app.worker(lease="2s", maintenance_interval="0.05s"):
            time.sleep(1.0)
            assert app.runs.get(run.id).status == "running", "the silent leader lost the lead early"
            done = app.runs.wait(run.id, timeout=15)
            rescued_after = time.monotonic() - led_at
        assert done.status == "completed"
        assert holder.poll() is None, "the holder was meant to stay alive"
        assert rescued_after >= 3.0, rescued_after
        attempts = app.runs.attempts(run.id)
        assert [a.status for a in attempts] == ["failed", "completed"]
        assert attempts[0].error is not None and attempts[0].error.type == "WorkerLost"
    finally:
        app.close()


def test_a_leader_that_keeps_calling_keeps_the_lead_past_its_silence(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(2)]
    try:
        stores[0].migrate()
        assert stores[0].try_lead("worker-0", 1.0)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert stores[0].try_lead("worker-0", 1.0)
            assert not stores[1].try_lead("worker-1", 1.0)
            time.sleep(0.3)
        time.sleep(1.5)  # silent for longer than its silence: the server ends its session
        assert eventually(lambda: stores[1].try_lead("worker-1", 1.0), 5)
        assert not stores[0].try_lead("worker-0", 1.0)
    finally:
        for store in stores:
            store.close()
