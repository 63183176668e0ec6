"""A worker whose process ends on this machine: its runs resume without waiting
for the lease, and a live worker's runs are never taken.

Real worker processes (``worker_app.py``) with a 60-second lease, killed with
SIGKILL in the middle of step 3 of a five-step run. A worker on the same
machine sees the process gone (``stackshift.processes``) and records the lost
attempt at once: the run completes long before the lease would have run out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_crash_recovery import Workers

from stackshift import StackShift

pytestmark = pytest.mark.slow

LEASE = 60.0


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(db_url, tmp_path / "effects.log")
    yield w
    w.stop_all()


def registered(app: StackShift) -> dict[int, str]:
    """pid -> worker id of the registered workers."""
    return {w.pid: w.id for w in app._service.list_workers()}


def kill(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL ``proc``; the time just before."""
    killed_at = time.time()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    return killed_at


def assert_taken_over(app: StackShift, run_id: str, doomed_pid: int, killed_at: float) -> None:
    done = app.runs.wait(run_id, timeout="30s")
    assert done.status == "completed", done.error
    assert done.attempt == 2
    lost = app.runs.attempts(run_id)[0]
    assert lost.status == "failed"
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert f"pid {doomed_pid}) ended" in lost.error.message
    assert lost.finished_at is not None
    # After the kill, and long before the 60-second lease ran out.
    assert killed_at <= lost.finished_at.timestamp() < killed_at + 10
    failed = [e for e in app.runs.timeline(run_id) if e.kind == "attempt.failed"]
    assert [e.data["error"]["type"] for e in failed] == ["WorkerLost"]
    # The dead worker is no longer listed.
    assert doomed_pid not in registered(app)


def test_a_running_worker_takes_over_at_once_when_a_sibling_process_dies(
    app: StackShift, workers: Workers
) -> None:
    doomed = workers.spawn("--hang-at", "3", "--lease", f"{LEASE}s")
    run = app.start("fiveSteps", {})
    workers.wait_for_line("start:step-3:")
    survivor = workers.spawn("--lease", f"{LEASE}s")
    workers.wait_for_line(f"ready:{survivor.pid}")

    # While the holder lives, its run stays with it: the survivor looks for
    # ended processes every second, and finds none.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        current = app.runs.get(run.id)
        assert (current.status, current.attempt) == ("running", 1)
        time.sleep(0.1)
    assert {doomed.pid, survivor.pid} <= set(registered(app))
    assert len(app.runs.attempts(run.id)) == 1

    killed_at = kill(doomed)
    assert_taken_over(app, run.id, doomed.pid, killed_at)
    # Steps 1 and 2 were not run again; step 3 was (at least once).
    started = [line.rsplit(":", 1)[0] for line in workers.lines() if line.startswith("start:")]
    assert started.count("start:step-1") == 1
    assert started.count("start:step-3") == 2


def test_a_worker_starting_after_the_crash_takes_over_at_once(
    app: StackShift, workers: Workers
) -> None:
    doomed = workers.spawn("--hang-at", "2", "--lease", f"{LEASE}s")
    runs = [app.start("fiveSteps", {}) for _ in range(3)]
    workers.wait_for_line("start:step-2:")
    killed_at = kill(doomed)
    held = [r.id for r in runs if app.runs.get(r.id).status == "running"]
    assert held  # the dead worker still holds them: nothing was alive to notice

    workers.spawn("--lease", f"{LEASE}s")
    for run_id in held:
        assert_taken_over(app, run_id, doomed.pid, killed_at)
    assert [app.runs.wait(r.id, timeout="30s").status for r in runs] == ["completed"] * 3
