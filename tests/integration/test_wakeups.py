"""A run started by another process starts within 50 ms on an idle worker.

The worker process polls only every 5 seconds, so a quick start can only come
from a wake-up: LISTEN/NOTIFY on PostgreSQL, SQLite's data version otherwise.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import pytest
from cluster import cluster_processes

from stackshift import StackShift

pytestmark = pytest.mark.slow


def test_a_run_started_in_another_process_starts_at_once(db_url: str, tmp_path: Path) -> None:
    app = StackShift(db_url)
    with cluster_processes(tmp_path) as processes:
        worker = processes.spawn("worker", db_url, str(tmp_path / "effects"),
                                 "--poll-interval", "5s")
        processes.wait_for(worker, "ready")
        app.runs.wait(app.start("stamp").id, timeout=30)  # the worker is up and claiming
        latencies = []
        for _ in range(20):
            time.sleep(random.uniform(0.05, 0.15))  # the worker is idle again
            before = time.time()
            run = app.start("stamp")
            done = app.runs.wait(run.id, timeout=10)
            assert done.status == "completed"
            latencies.append(float(done.result) - before)
    app.close()
    assert max(latencies) < 1.0, f"a start waited for polling: {latencies}"
    assert statistics.median(latencies) < 0.05, f"start-to-run latencies: {latencies}"
