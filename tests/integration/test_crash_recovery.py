"""kill -9 of a worker in the middle of a five-step run.

A real worker process (``worker_app.py``) is killed with SIGKILL while step 3
runs. A second worker process, already running, notices the lease expire,
records the lost attempt as ``WorkerLost`` and finishes the run. The side
effects each process made are in a file, so we can check that no completed
step ran twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import stop_processes
from stackshift import StackShift

APP = Path(__file__).with_name("worker_app.py")

pytestmark = pytest.mark.slow


class Workers:
    """Worker subprocesses for one test; all are stopped at the end."""

    def __init__(self, url: str, effects: Path) -> None:
        self.url = url
        self.effects = effects
        self.procs: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[int, Path] = {}

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.effects.with_name(f"worker-{len(self.procs)}.out")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(APP), self.url, str(self.effects), *args],
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.outputs[proc.pid] = log
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return self.outputs[proc.pid].read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.effects.read_text().splitlines() if self.effects.exists() else []

    def wait_for_line(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.startswith(prefix):
                    return line
            for proc in self.procs:
                if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL):
                    raise AssertionError(
                        f"worker {proc.pid} died ({proc.returncode}):\n{self.output(proc)}")
            time.sleep(0.02)
        raise AssertionError(f"no {prefix!r} in the effects file after {timeout}s: "
                             f"{self.lines()}")

    def stop_all(self) -> None:
        stop_processes(self.procs)


@pytest.fixture
def workers(db_url: str, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(db_url, tmp_path / "effects.log")
    yield w
    w.stop_all()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_killed_worker_run_is_finished_by_another_without_repeating_steps(
    app: StackShift, workers: Workers, flavour: str
) -> None:
    doomed = workers.spawn("--flavour", flavour, "--hang-at", "3", "--lease", "1s")
    run = app.start("fiveSteps", {"orderId": "order_123"})

    workers.wait_for_line("start:step-3:")
    # The doomed worker is in the middle of step 3; steps 1 and 2 are durable.
    steps = app.runs.steps(run.id)
    assert [(s.key, s.status) for s in steps] == [("step-1", "completed"),
                                                  ("step-2", "completed")]
    assert app.runs.get(run.id).status == "running"

    # A second worker joins; it cannot take a run another worker holds a lease on.
    survivor = workers.spawn("--flavour", flavour, "--lease", "1s")
    workers.wait_for_line(f"ready:{survivor.pid}")
    time.sleep(0.3)
    assert app.runs.get(run.id).status == "running"
    assert app.runs.get(run.id).attempt == 1

    killed_at = time.time()
    os.kill(doomed.pid, signal.SIGKILL)
    assert doomed.wait(timeout=10) == -signal.SIGKILL

    done = app.runs.wait(run.id, timeout="30s")
    assert done.status == "completed", done.error
    assert done.attempt == 2

    # No completed step ran twice; the interrupted step ran again (at-least-once).
    effects = workers.lines()
    finished = Counter(line.rsplit(":", 1)[0] for line in effects if line.startswith("done:"))
    assert finished == {f"done:step-{n}": 1 for n in range(1, 6)}
    started = Counter(line.rsplit(":", 1)[0] for line in effects if line.startswith("start:"))
    assert started == {"start:step-1": 1, "start:step-2": 1, "start:step-3": 2,
                       "start:step-4": 1, "start:step-5": 1}
    # Steps 1-2 came from the killed worker's record, 3-5 from the survivor.
    assert done.result == {"pids": [doomed.pid] * 2 + [survivor.pid] * 3}
    by_key = {s.key: s for s in app.runs.steps(run.id)}
    assert [by_key[f"step-{n}"].attempt for n in range(1, 6)] == [1, 1, 2, 2, 2]

    # The lost attempt is on the record.
    attempts = app.runs.attempts(run.id)
    assert [a.status for a in attempts] == ["failed", "completed"]
    lost = attempts[0]
    assert lost.error is not None and lost.error.type == "WorkerLost"
    assert lost.worker_id != attempts[1].worker_id
    assert lost.finished_at is not None
    # It was taken back only after the lease ran out, not while the worker lived.
    assert lost.finished_at.timestamp() >= killed_at

    timeline = app.runs.timeline(run.id)
    failed = [e for e in timeline if e.kind == "attempt.failed"]
    assert len(failed) == 1
    assert failed[0].attempt == 1
    assert failed[0].data["error"]["type"] == "WorkerLost"
    kinds = [e.kind for e in timeline]
    after_loss = kinds[kinds.index("attempt.failed"):]
    assert after_loss[:4] == ["attempt.failed", "run.retrying", "run.queued", "attempt.started"]
    assert kinds[-1] == "run.completed"
    assert [e.attempt for e in timeline if e.kind == "attempt.started"] == [1, 2]


def test_killed_worker_with_no_attempts_left_fails_the_run_as_worker_lost(
    app: StackShift, workers: Workers
) -> None:
    doomed = workers.spawn("--hang-at", "2", "--lease", "1s")
    run = app.start("fiveSteps", {}, max_attempts=1)
    workers.wait_for_line("start:step-2:")
    survivor = workers.spawn("--lease", "1s")
    workers.wait_for_line(f"ready:{survivor.pid}")
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)

    failed = app.runs.wait(run.id, timeout="30s")
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.type == "WorkerLost"
    assert [a.error.type for a in app.runs.attempts(run.id) if a.error] == ["WorkerLost"]
    # The survivor did not run anything for it.
    assert not [line for line in workers.lines()
                if line.startswith("start:") and line.endswith(f":{survivor.pid}")]
