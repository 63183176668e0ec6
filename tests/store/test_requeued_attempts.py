"""A run queued again after a failed attempt says which attempt that was, on every
store, whether maintenance queued it or a worker's claim took it straight from
``retrying`` (the plain claim, and the claim of a limited queue)."""

from __future__ import annotations

from typing import Any

import pytest

from stackshift import StackShift
from stackshift.engine import outcomes
from stackshift.testing import FakeClock, run_until_idle


@pytest.mark.parametrize("path", ["maintenance", "claim", "limited claim"])
def test_the_queued_entry_after_a_retry_names_the_failed_attempt(
    fake_app: StackShift, clock: FakeClock, path: str
) -> None:
    queue = "limited" if path == "limited claim" else "default"
    if queue == "limited":
        fake_app.queue(queue, concurrency=5)

    @fake_app.job("flaky", queue=queue, max_attempts=3, backoff={"base": "60s", "jitter": False})
    def flaky(ctx: Any) -> None:
        raise RuntimeError("down")

    scheduled = fake_app.start("flaky", delay="10s")
    clock.advance("10s")
    run_until_idle(fake_app)  # attempt 1 fails; attempt 2 is due in 60 s
    assert fake_app.runs.get(scheduled.id).status == "retrying"
    clock.advance("60s")
    store = fake_app._service.store
    if path == "maintenance":
        assert store.promote_due(clock.now()) == 1
    claimed = store.claim_runs("w", ["flaky"], 1, 60.0, clock.now())
    assert [c.run.id for c in claimed] == [scheduled.id]
    assert claimed[0].run.attempt == 2
    queued = [(e.data["from"], e.attempt) for e in fake_app.runs.timeline(scheduled.id)
              if e.kind == "run.queued"]
    # Queued from scheduled before any attempt, then from retrying after attempt 1.
    assert queued == [("scheduled", None), ("retrying", 1)]


@pytest.mark.parametrize("path", ["maintenance", "claim"])
def test_an_attempt_due_before_its_failure_was_recorded_is_queued_after_it(
    fake_app: StackShift, clock: FakeClock, path: str
) -> None:
    """A remote worker that finds another's attempt lost says the next one is due
    at once by its own clock, a little behind the server's: the timeline still
    shows the failure, then the retry, then the run queued, in that order."""
    fake_app.job("lost", max_attempts=3)(lambda ctx: None)
    run = fake_app.start("lost")
    store = fake_app._service.store
    (claimed,) = store.claim_runs("w", ["lost"], 1, 60.0, clock.now())
    clock.advance("1s")
    behind = clock.now() - 0.005
    outcome = outcomes.lost_worker(attempts_used=1, max_attempts=3, now=behind)
    assert store.finish_attempt(claimed.lease, outcome, [], clock.now())
    if path == "maintenance":
        assert store.promote_due(clock.now()) == 1
    (again,) = store.claim_runs("w2", ["lost"], 1, 60.0, clock.now())
    assert again.run.attempt == 2
    kinds = [e.kind for e in fake_app.runs.timeline(run.id)]
    assert kinds[kinds.index("attempt.failed"):] == [
        "attempt.failed", "run.retrying", "run.queued", "attempt.started"]
    retrying = next(e for e in fake_app.runs.timeline(run.id) if e.kind == "run.retrying")
    assert retrying.data["next_attempt_at"] == clock.now()  # not before the failure
