"""The benchmark harness's arithmetic and plumbing (no timing is asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.cli import plan  # noqa: E402
from bench.common import RESULT_MARK, drain_rate, percentile  # noqa: E402
from bench.report import (  # noqa: E402
    QUICK_NOTE,
    advantage,
    check_targets,
    markdown,
    merge,
    summarise,
)


def test_percentile_takes_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0


def test_summary_is_median_min_max_of_the_repetitions_that_worked() -> None:
    reps = [{"drain_rps": 100.0}, {"drain_rps": 300.0}, {"drain_rps": 200.0},
            {"error": "TimeoutError: slow"}]
    cell = summarise(reps)
    assert cell["repetitions"] == 3
    assert cell["errors"] == ["TimeoutError: slow"]
    assert (cell["drain_rps"]["median"], cell["drain_rps"]["min"],
            cell["drain_rps"]["max"]) == (200.0, 100.0, 300.0)


def test_advantage_reads_higher_and_lower_is_better_the_right_way_round() -> None:
    assert advantage(3000, 300, higher_is_better=True) == 10
    assert advantage(0.5, 2.0, higher_is_better=False) == 4
    assert advantage(None, 2.0, higher_is_better=False) is None


def _cells() -> dict[str, dict[str, object]]:
    return {
        "stackshift/sqlite-full/W1": summarise([{"drain_rps": 3500, "steady_rps": 2500}]),
        "dbos/sqlite-full/W1": summarise([{"drain_rps": 300, "steady_rps": 300}]),
        "stackshift/sqlite-full/W5": summarise([{"recovery_s": 5.4, "budget_s": 6.0}]),
    }


def test_targets_compare_against_absolute_bounds_dbos_and_per_result_budgets() -> None:
    rows = {(r["metric"], r["target"]): r for r in check_targets(_cells())}
    assert rows[("drain_rps", ">= 3,000 runs/s")]["met"] is True
    assert rows[("steady_rps", ">= 3,000 runs/s")]["met"] is False
    assert rows[("drain_rps", ">= 10x DBOS")]["ratio"] == pytest.approx(3500 / 300)
    assert rows[("steady_rps", ">= 10x DBOS")]["met"] is False
    assert rows[("recovery_s", "<= lease + 1 s")]["met"] is True


def test_markdown_shows_ratios_and_why_a_peer_is_missing() -> None:
    cells = _cells()
    data = {
        "run": {"finished_at": "now", "commit": "abc", "command": "python -m bench",
                "machine": "2 cores", "load_before": 0.5, "load_after": 0.7,
                "load_note": "", "repetitions": 1, "stores": ["sqlite-full"],
                "engines": ["stackshift", "dbos", "huey"], "workloads": ["W1", "W5"],
                "probe": [{"python_loop_ms": 301.4, "thread_round_trip_us": 28.2,
                           "fsync_us": 260.0},
                          {"python_loop_ms": 320.0, "thread_round_trip_us": 30.0,
                           "fsync_us": 515.0}]},
        "cells": cells, "targets": check_targets(cells), "fairness": ["same durability"],
        "method": ["W1: ..."],
    }
    text = markdown(data)
    assert "| DBOS | SQLite FULL | 300 | 300 | \u00d711.7 / \u00d78.3 |" in text
    assert "Huey deletes a task from the queue" in text
    assert "- same durability" in text
    assert "a pure-Python loop 301 and 320 ms" in text
    assert "flushed to disk 260 and 515 µs" in text


def test_a_drain_is_timed_to_its_end_with_few_counts() -> None:
    # A backlog of 1,000 runs drained at 2,000 runs a second (done in 0.5 s).
    started = time.monotonic()
    looks = []

    def count() -> int:
        looks.append(1)
        return min(1000, int((time.monotonic() - started) * 2000))

    rate, timed = drain_rate(count, 0, 1000, cap=10.0)
    assert timed == 1000
    assert 1700 < rate <= 2000  # the end seen within a look (20 ms) of it
    assert len(looks) <= 20  # a look every 20 ms takes 26


def _results(cells: dict[str, dict[str, object]], workloads: list[str],
             commit: str) -> dict[str, object]:
    return {
        "run": {"finished_at": "then", "commit": commit, "command": "python -m bench",
                "machine": "2 cores", "load_before": 0.5, "load_after": 0.7, "load_max": 0.9,
                "load_mean": 0.6, "load_note": "", "repetitions": 3, "quick": False,
                "sizes": {"w5_lease": 5.0}, "stores": ["sqlite-full"],
                "engines": ["stackshift", "dbos"], "workloads": workloads},
        "cells": cells, "raw": {k: [] for k in cells}, "targets": check_targets(cells),
        "fairness": [], "method": [],
    }


def test_merge_takes_whole_workloads_from_a_later_run_and_keeps_the_others() -> None:
    before = {**_cells(), "dbos/sqlite-full/W5": summarise([{"recovery_s": 1.2}])}
    before["stackshift/sqlite-full/W5"] = summarise([{"recovery_s": 6.2, "budget_s": 6.0}])
    base = _results(before, ["W1", "W5"], "aaa")
    later = {"stackshift/sqlite-full/W5": summarise([{"recovery_s": 5.3, "budget_s": 6.0}]),
             "dbos/sqlite-full/W5": summarise([{"recovery_s": 1.1}])}
    merged = merge(base, _results(later, ["W5"], "bbb"))
    assert merged["cells"]["stackshift/sqlite-full/W5"] == later["stackshift/sqlite-full/W5"]
    assert merged["cells"]["dbos/sqlite-full/W5"] == later["dbos/sqlite-full/W5"]
    assert merged["cells"]["stackshift/sqlite-full/W1"] == before["stackshift/sqlite-full/W1"]
    recovery = [t for t in merged["targets"] if t["metric"] == "recovery_s"]
    assert [(t["value"], t["met"]) for t in recovery] == [(5.3, True)]
    assert merged["run"]["commit"] == "aaa"
    assert [(u["workloads"], u["commit"]) for u in merged["run"]["updates"]] == [(["W5"], "bbb")]
    assert base["cells"]["stackshift/sqlite-full/W5"] == before["stackshift/sqlite-full/W5"]
    assert "W5 measured again then at `bbb`" in markdown(merged)
    again = merge(merged, _results(later, ["W5"], "ddd"))
    assert [(u["workloads"], u["commit"]) for u in again["run"]["updates"]] == [(["W5"], "ddd")]

    # Half a workload would put figures of two runs in one ratio: refused.
    with pytest.raises(ValueError, match="dbos/sqlite-full/W5"):
        merge(base, _results({"stackshift/sqlite-full/W5": later["stackshift/sqlite-full/W5"]},
                             ["W5"], "ccc"))


def test_repetitions_are_interleaved_and_peers_only_run_what_they_can() -> None:
    args = Namespace(reps=2, workloads=["W1", "W2"], stores=["sqlite-full", "postgres"],
                     engines=["stackshift", "huey", "procrastinate"], mem_stores=[])
    cells = plan(args)
    assert cells[0] == (0, "W1", "sqlite-full", "stackshift")
    assert [c[0] for c in cells] == sorted(c[0] for c in cells)  # rep 1 finishes first
    assert (0, "W2", "sqlite-full", "huey") not in cells  # Huey has no steps
    assert (0, "W1", "postgres", "huey") not in cells  # Huey runs on SQLite only
    assert (1, "W1", "postgres", "procrastinate") in cells


def test_a_workload_script_prints_one_result_line(tmp_path: Path) -> None:
    """W4 for real on SQLite: duplicates of one idempotency key store no extra run."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.engines.stackshift_engine", "run", "--workload", "W4",
         "--store", "sqlite-full", "--scale", "quick", "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "BENCH_SIZES": json.dumps({"w4_duplicates": 20})},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert len(lines) == 1, out.stderr
    result = json.loads(lines[0][len(RESULT_MARK):])
    assert result["extra_runs"] == 0
    assert result["dup_ms"] > 0


def test_the_entry_point_runs_the_workloads_asked_for_and_writes_what_ran(
    store_kind: str, db_url: str, tmp_path: Path
) -> None:
    """``python -m bench --quick`` for StackShift on one store, as a user runs it:
    every cell ends without an error, W4 stores no extra run, results.json and
    results.md say what ran and that it was a smoke run, and the cells'
    databases are gone. (The benchmark makes schemas of its own on the server of
    ``db_url``.)"""
    store = {"sqlite": "sqlite-full", "postgres": "postgres"}[store_kind]
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--engines", "stackshift", "--stores", store,
         "--workloads", "W1,W4", "--no-install", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TMPDIR": str(scratch),
             **({"STACKSHIFT_BENCH_POSTGRES_URL": db_url.partition("?")[0]}
                if store == "postgres" else {})},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(scratch.iterdir()) == []
    data = json.loads((out / "results.json").read_text())
    assert (data["run"]["quick"], data["run"]["repetitions"]) == (True, 1)
    assert (data["run"]["workloads"], data["run"]["stores"]) == (["W1", "W4"], [store])
    w1, w4 = data["cells"][f"stackshift/{store}/W1"], data["cells"][f"stackshift/{store}/W4"]
    assert w1["errors"] == [] and w4["errors"] == [], (w1, w4)
    assert w1["drained"]["median"] > 0 and w1["steady_rps"]["median"] > 0
    assert (w4["extra_runs"]["median"], w4["dup_ms"]["median"] > 0) == (0, True)
    assert {(t["workload"], t["store"]) for t in data["targets"]} == {
        ("W1", store), ("W4", store)}
    text = (out / "results.md").read_text()
    assert text.startswith("# Benchmark results\n")
    assert QUICK_NOTE in text and "Every figure is from one repetition." in text
    for heading in ("## Targets (StackShift)", "### W1: No-op job throughput",
                    "### W4: Duplicate start, same idempotency key"):
        assert heading in text


def test_a_cell_that_fails_keeps_its_logs_and_says_where(tmp_path: Path) -> None:
    """A cell stopped by ``--timeout`` is an error in the results, and its folder
    (its database and the engine's log) stays where the run says."""
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--engines", "stackshift", "--stores",
         "sqlite-normal", "--workloads", "W1", "--no-install", "--timeout", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TMPDIR": str(scratch), "COLUMNS": "400"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cell = json.loads((out / "results.json").read_text())["cells"][
        "stackshift/sqlite-normal/W1"]
    assert cell["errors"] == ["timed out after 1s"], cell
    [kept] = scratch.iterdir()
    assert [p.name for p in kept.iterdir()] == ["stackshift-sqlite-normal-W1-r1"]
    assert (kept / "stackshift-sqlite-normal-W1-r1" / "stderr.log").exists()
    assert f"The logs of the cells that failed are kept in {kept}" in done.stdout
