"""Operations that race on one run agree on what happened, on every store.

SQLite runs one writer at a time; PostgreSQL runs these transactions at once
(READ COMMITTED), and the store keeps them consistent with row locks taken
before a run is moved from the status it was read in. Each test releases two
operations together, many times over, and checks that the outcome is one of
the orders they could have happened in, never a mix of both.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from stackshift import NonRetriableError, RunNotFoundError, StackShift
from stackshift.ids import new_id
from stackshift.testing import FakeClock, run_until_idle

ROUNDS = 25


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released at the same moment; re-raise any failure."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def test_a_cancel_racing_a_claim_is_never_lost(fake_app: StackShift, clock: FakeClock) -> None:
    store = fake_app._service.store
    for i in range(ROUNDS):
        run = fake_app.start("slow", {"i": i})
        claimed, _ = together(
            lambda: store.claim_runs("racer", ["slow"], 1, 60.0, clock.now()),
            lambda run_id=run.id: fake_app.runs.cancel(run_id, "changed my mind"),
        )
        after = fake_app.runs.get(run.id)
        with store.db.read() as tx:
            row = tx.one("get_run", id=run.id)
        assert row is not None
        if claimed:  # claimed first: the cancel reaches the worker
            assert after.status == "running"
            assert row["cancel_requested"] == 1
        else:  # cancelled first: nothing to claim
            assert after.status == "cancelled"


def test_an_event_racing_a_wait_timeout_is_taken_or_refused_whole(
        fake_app: StackShift, clock: FakeClock) -> None:
    @fake_app.job("await-payment")
    def await_payment(ctx: Any) -> Any:
        event = ctx.step.wait_for_event("paid", correlation_key=ctx.payload["key"],
                                        timeout="10s", on_timeout="fail")
        return event.payload

    store = fake_app._service.store
    settings = fake_app._service.settings
    outcomes = set()
    for i in range(ROUNDS):
        key = f"order-{i}"
        run = fake_app.start("await-payment", {"key": key})
        run_until_idle(fake_app)
        assert fake_app.runs.get(run.id).status == "waiting"
        start = clock.now()
        sent, fired = together(
            # The event comes in just before the timeout, the timer fires just after.
            lambda key=key, start=start: store.send_event(
                new_id("evt"), "paid", '{"amount":5}', key, None, start + 9.9,
                settings.event_retention, settings.event_dedupe_window),
            lambda start=start: store.fire_timers(start + 10.1),
        )
        clock.advance("11s")
        run_until_idle(fake_app)
        done = fake_app.runs.get(run.id)
        found = store.get_event(sent.id, clock.now())
        assert found is not None
        takers = [t["run_id"] for t in found[1]]
        attempts = [a.status for a in fake_app.runs.attempts(run.id)]
        if run.id in sent.resumed_run_ids:  # the event won: the run had it
            assert run.id not in fired
            assert done.status == "completed" and done.result == {"amount": 5}
            assert attempts == ["completed"]
            assert takers == [run.id]
            outcomes.add("event")
        else:  # the timeout won: the event resumed nothing and nobody took it
            assert run.id in fired
            assert done.status == "failed" and done.error is not None
            assert done.error.type == "WaitTimeoutError"
            assert attempts == ["failed"]
            assert takers == []
            outcomes.add("timeout")
    assert outcomes, "no round ran"


def test_a_dead_letter_retried_as_retention_deletes_it_is_kept_or_was_gone(
        fake_app: StackShift, clock: FakeClock) -> None:
    """A retry wins (the run is queued again and stays) or retention does (the
    retry finds no run); a retried run is never deleted."""
    @fake_app.job("doomed")
    def doomed(ctx: Any) -> Any:
        raise NonRetriableError("no")

    service = fake_app._service
    outcomes = set()
    for i in range(ROUNDS):
        run = fake_app.start("doomed", {"i": i})
        run_until_idle(fake_app)
        assert fake_app.runs.get(run.id).status == "failed"
        clock.advance("31d")

        def retry(run_id: str = run.id) -> bool:
            try:
                fake_app.runs.retry(run_id)
            except RunNotFoundError:
                return False
            return True

        retried, _ = together(retry, lambda: service.apply_retention(clock.now()))
        if retried:
            assert fake_app.runs.get(run.id).status == "queued"
            outcomes.add("retried")
        else:
            with pytest.raises(RunNotFoundError):
                fake_app.runs.get(run.id)
            outcomes.add("deleted")
    assert outcomes, "no round ran"


def test_a_key_taken_over_as_retention_deletes_it_stays_taken(
        fake_app: StackShift, clock: FakeClock) -> None:
    """An expired idempotency key is taken by a new start while retention deletes
    expired keys: a repeated start within the new key's life returns that run."""
    service = fake_app._service
    for i in range(ROUNDS):
        key = f"sync-{i}"
        first = fake_app.start("sync", {"n": 1}, idempotency_key=key, idempotency_ttl="1h")
        clock.advance("2h")
        second, _ = together(
            lambda key=key: fake_app.start("sync", {"n": 2}, idempotency_key=key,
                                           idempotency_ttl="1h"),
            lambda: service.apply_retention(clock.now()),
        )
        assert second.id != first.id
        again = fake_app.start("sync", {"n": 2}, idempotency_key=key, idempotency_ttl="1h")
        assert again.id == second.id


def test_a_state_key_set_again_as_retention_deletes_it_keeps_its_value(
        fake_app: StackShift, clock: FakeClock) -> None:
    """A state key past its expiry is set again while retention deletes expired
    keys: the new value stays."""
    service = fake_app._service
    for i in range(ROUNDS):
        key = f"token-{i}"
        fake_app.state.set(key, "old", ttl="1h")
        clock.advance("2h")
        together(lambda key=key: fake_app.state.set(key, "new", ttl="1d"),
                 lambda: service.apply_retention(clock.now()))
        assert fake_app.state.get(key) == "new"
