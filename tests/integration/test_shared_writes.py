"""Writes of one process that share a transaction: runs claimed together end
together, a quick run is never held back by a slow one, and a checkpoint whose
lease was lost fails alone in a shared transaction."""

from __future__ import annotations

import threading
import time
from typing import Any

from stackshift import StackShift
from stackshift.errors import LeaseLost
from stackshift.store.base import StepWrite
from stackshift.store.database import Tx


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_quick_run_is_not_held_back_by_a_slow_run_claimed_with_it(app: StackShift) -> None:
    release = threading.Event()

    @app.job("quick")
    def quick(ctx: Any) -> str:
        return "done"

    @app.job("slow")
    def slow(ctx: Any) -> str:
        release.wait(20)
        return "done"

    slow_run = app.start("slow")
    quick_run = app.start("quick")
    try:
        with app.worker(concurrency=2):  # one claim takes both
            wait_until(lambda: app.runs.get(quick_run.id).status == "completed", 5.0,
                       "the quick run to complete")
            assert app.runs.get(slow_run.id).status == "running"
            release.set()
            wait_until(lambda: app.runs.get(slow_run.id).status == "completed", 10.0,
                       "the slow run to complete")
    finally:
        release.set()
    assert app.runs.get(slow_run.id).attempt == 1


def test_expected_writes_share_one_transaction_and_a_missing_one_is_not_waited_for_long(
        app: StackShift) -> None:
    group = app._service.store.group_commit
    seen: list[int] = []

    def write(tx: Tx) -> None:
        tx.raw("SELECT 1", {})
        seen.append(id(tx))

    def late_writer(delay: float) -> threading.Thread:
        def go() -> None:
            time.sleep(delay)
            group.run(write)
        thread = threading.Thread(target=go)
        thread.start()
        return thread

    # Three writes 5 ms apart: announced, they share one transaction.
    group.expect(3, within=2.0)
    threads = [late_writer(i * 0.005) for i in range(3)]
    for thread in threads:
        thread.join(10)
    assert len(seen) == 3
    assert len(set(seen)) == 1, "announced writes committed in separate transactions"

    # Not announced, the first commits without waiting for the others.
    seen.clear()
    threads = [late_writer(i * 0.05) for i in range(3)]
    for thread in threads:
        thread.join(10)
    assert len(set(seen)) == 3

    # An announced write that never comes holds the next one up for `within` only.
    seen.clear()
    group.expect(2, within=0.2)
    started = time.monotonic()
    group.run(write)
    waited = time.monotonic() - started
    assert 0.1 <= waited < 2.0
    started = time.monotonic()
    group.run(write)  # the expectation is over
    assert time.monotonic() - started < 0.1


def test_a_checkpoint_whose_lease_was_lost_fails_alone_in_a_shared_transaction(
        app: StackShift) -> None:
    @app.job("stepper")
    def stepper(ctx: Any) -> None:
        return None

    store = app._service.store
    kept_run, lost_run = app.start("stepper"), app.start("stepper")
    now = time.time()
    claimed = {c.run.id: c for c in store.claim_runs("wkr_test", ["stepper"], 2, 30.0, now)}
    assert set(claimed) == {kept_run.id, lost_run.id}
    # The lost run is handed back: its lease is gone.
    assert store.release_run(claimed[lost_run.id].lease, now)

    def step(key: str) -> StepWrite:
        return StepWrite(key=key, name=key, kind="run", function=None, status="completed",
                         result='"ok"', error=None, started_at=now, finished_at=now)

    outcomes: dict[str, Any] = {}

    def save(run_id: str) -> None:
        try:
            outcomes[run_id] = store.save_step(claimed[run_id].lease, step("s"), [],
                                               time.time(), 30.0)
        except LeaseLost as exc:
            outcomes[run_id] = exc

    store.expect_writes(2, 2.0)  # both checkpoints in one transaction
    threads = [threading.Thread(target=save, args=(run_id,))
               for run_id in (kept_run.id, lost_run.id)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert outcomes[kept_run.id] is False  # saved, no cancel requested
    assert isinstance(outcomes[lost_run.id], LeaseLost)
    assert [s.key for s in app.runs.steps(kept_run.id)] == ["s"]
    assert app.runs.steps(lost_run.id) == []
    assert app.runs.get(lost_run.id).status == "queued"
    kinds = [e.kind for e in app.runs.timeline(lost_run.id)]
    assert "step.completed" not in kinds

