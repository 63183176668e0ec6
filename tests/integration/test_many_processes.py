"""Four client processes hammering one key, on every store.

Each process has its own client and connections; they are released together.
Starting one idempotency key 200 times from each makes exactly one run, and
1,000 increments (250 from each) of one state key add up to exactly 1,000.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cluster import Processes, cluster_processes

from stackshift import StackShift

pytestmark = pytest.mark.slow

PROCESSES = 4


def race(processes: Processes, mode: str, url: str, key: str, times: int) -> list[Any]:
    """Run ``mode`` in four processes released at once; return each one's results."""
    procs = [processes.spawn(mode, url, key, "--times", str(times)) for _ in range(PROCESSES)]
    for proc in procs:
        processes.wait_for(proc, "ready")
    for proc in procs:
        processes.send(proc, "go")
    results = []
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, processes.log_of(proc)
        results.append(json.loads(line))
        proc.wait(30)
    return results


def test_four_processes_starting_one_key_200_times_each_make_one_run(
        db_url: str, tmp_path: Path) -> None:
    app = StackShift(db_url)  # migrated once, before the race
    with cluster_processes(tmp_path) as processes:
        results = race(processes, "starts", db_url, "charge:order-1", 200)
    starts = [tuple(r) for got in results for r in got]
    assert len(starts) == PROCESSES * 200
    assert len({run_id for run_id, _ in starts}) == 1
    assert [created for _, created in starts].count(True) == 1
    assert len(app.runs.list(limit=10).items) == 1
    app.close()


def test_a_thousand_increments_from_four_processes_make_exactly_a_thousand(
        db_url: str, tmp_path: Path) -> None:
    app = StackShift(db_url)
    with cluster_processes(tmp_path) as processes:
        results = race(processes, "increments", db_url, "orders-today", 250)
    assert app.state.get("orders-today") == 1000
    # Every increment saw a different total: none was lost or applied twice.
    assert sorted(v for got in results for v in got) == list(range(1, 1001))
    app.close()
