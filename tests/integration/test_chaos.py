"""Chaos: worker processes killed with SIGKILL all the time, and nothing is lost.

Four worker processes on PostgreSQL execute 500 runs of five steps; each step
inserts its side effect into the ``effects`` table (committed at once, on a
connection of its own). About every half second a random worker is killed
with SIGKILL and a replacement started. At the end every run is completed,
none is stuck, and each step's effect happened once, plus at most once more
for each kill that landed inside that step (after its effect, before its
checkpoint).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path

import pytest
from cluster import cluster_processes, postgres_schema

from stackshift import StackShift

pytestmark = pytest.mark.slow

RUNS = 500
WORKERS = 4
KILL_EVERY = 0.5
#: Each step sleeps this long, so that the runs take long enough (about 6 s of
#: steps on 16 slots) for kills to land, however fast the engine is.
STEP_SECONDS = 0.04
KILLING_FOR = 75.0  # seconds at most; killing stops once every run is completed
FINISH_WITHIN = 60.0  # seconds after the last kill


def test_workers_killed_every_half_second_lose_nothing_and_repeat_only_killed_steps(
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    with postgres_schema(request.config) as url, cluster_processes(tmp_path) as processes:
        app = StackShift(url)
        with app._service.store.db.write() as tx:
            tx.raw("CREATE TABLE effects (id bigint GENERATED ALWAYS AS IDENTITY, "
                   "run_id text NOT NULL, step integer NOT NULL, pid integer NOT NULL)", {})
        run_ids = [app.start("fiveEffects", {"i": i}, max_attempts=50).id for i in range(RUNS)]

        def spawn() -> object:
            return processes.spawn("worker", url, "table", "--lease", "2s", "--concurrency", "4",
                                   "--poll-interval", "0.2s", "--step-seconds", str(STEP_SECONDS))

        def status_counts() -> dict[str, int]:
            return app._service.store.count_runs_by_status()

        live = [spawn() for _ in range(WORKERS)]
        killed: set[int] = set()
        started = time.monotonic()
        while time.monotonic() - started < KILLING_FOR:
            time.sleep(random.uniform(0.6, 1.4) * KILL_EVERY)
            if status_counts().get("completed", 0) == RUNS:
                break
            victim = live.pop(random.randrange(len(live)))
            processes.kill(victim)  # type: ignore[arg-type]
            killed.add(victim.pid)  # type: ignore[attr-defined]
            live.append(spawn())
        deadline = time.monotonic() + FINISH_WITHIN
        while status_counts().get("completed", 0) < RUNS and time.monotonic() < deadline:
            time.sleep(0.2)

        counts = status_counts()
        assert counts == {"completed": RUNS}, f"runs not completed: {counts}"
        assert len(killed) >= 10, f"only {len(killed)} kills landed; the test proved little"
        runs = {run_id: app.runs.get(run_id) for run_id in run_ids}
        assert all(r.status == "completed" for r in runs.values())

        with app._service.store.db.read() as tx:
            effects = tx.raw("SELECT run_id, step, pid FROM effects", {})
            steps = tx.raw("SELECT run_id, COUNT(*) AS n FROM steps"
                           " WHERE status = 'completed' GROUP BY run_id", {})
        assert {r["run_id"]: r["n"] for r in steps} == dict.fromkeys(run_ids, 5)
        by_step: dict[tuple[str, int], list[int]] = defaultdict(list)
        for row in effects:
            by_step[(row["run_id"], row["step"])].append(row["pid"])
        repeats = 0
        for run_id in run_ids:
            for step in range(1, 6):
                pids = by_step[(run_id, step)]
                assert pids, f"step {step} of {run_id} never made its effect"
                kills_inside = sum(1 for pid in pids if pid in killed)
                survivors = len(pids) - kills_inside
                # Each execution but the one that was checkpointed ended in a kill.
                assert survivors <= 1, (run_id, step, pids)
                assert len(pids) <= 1 + kills_inside, (run_id, step, pids)
                repeats += len(pids) - 1
        print(f"{len(killed)} workers killed; {repeats} step effects repeated after a kill;"
              f" {time.monotonic() - started:.1f}s")
        app.close()
