"""Idempotency keys under contention: one run, however many starts arrive at once.

The key is taken by a unique index in the same transaction that inserts the run,
so duplicates racing from threads and from separate processes (each with its own
client and connections) all map to the single run that won.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Callable
from typing import Any

import pytest

from stackshift import IdempotencyConflictError, Run, StackShift
from stackshift.testing import FakeClock

TABLES = ("runs", "timeline", "idempotency_keys", "attempts", "steps", "logs")
KEY = "verify:user_123"
PAYLOAD = {"userId": "user_123", "email": "ada@example.com"}


def row_counts(app: StackShift) -> dict[str, int]:
    """Rows in every table a start could touch, read through the store's own connection."""
    counts = {}
    with app._service.store.db.read() as tx:
        for table in TABLES:
            counts[table] = int(tx.raw(f"SELECT COUNT(*) AS n FROM {table}", {})[0]["n"])
    return counts


def race(n: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(i)`` in ``n`` threads released together; return results or exceptions."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def body(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = call(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a start hung"
    return results


def test_fifty_threads_starting_one_key_create_exactly_one_run(app: StackShift) -> None:
    results = race(50, lambda i: app.start("send-verification-email", PAYLOAD,
                                           idempotency_key=KEY, idempotency_ttl="30d"))
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    runs: list[Run] = results
    assert len({r.id for r in runs}) == 1
    assert [r.created for r in runs].count(True) == 1
    (run_id,) = {r.id for r in runs}

    assert [r.id for r in app.runs.list(idempotency_key=KEY)] == [run_id]
    assert len(app.runs.list()) == 1
    timeline = [e.kind for e in app.runs.timeline(run_id)]
    assert timeline.count("run.queued") == 1
    assert timeline.count("run.duplicate_start") == 49
    counts = row_counts(app)
    assert (counts["runs"], counts["idempotency_keys"]) == (1, 1)


def test_threads_with_two_payloads_one_wins_the_others_conflict(app: StackShift) -> None:
    payloads = [{"email": "a@example.com"}, {"email": "b@example.com"}]
    results = race(40, lambda i: app.start("send-verification-email", payloads[i % 2],
                                           idempotency_key=KEY))
    runs = [r for r in results if isinstance(r, Run)]
    conflicts = [r for r in results if isinstance(r, IdempotencyConflictError)]
    assert len(runs) + len(conflicts) == 40
    (run_id,) = {r.id for r in runs}
    winner = app.runs.get(run_id)
    # Everyone who sent the winner's payload got the run; everyone else a conflict.
    assert len(runs) == 20 and len(conflicts) == 20
    assert all(r.payload == winner.payload for r in runs)
    assert {c.existing_run_id for c in conflicts} == {run_id}
    assert len(app.runs.list()) == 1
    assert [e.kind for e in app.runs.timeline(run_id)].count("run.duplicate_start") == 19


def _start_in_process(url: str, barrier: Any, out: Any, threads: int) -> None:
    """A separate process with its own client, racing ``threads`` starts of one key."""
    client = StackShift(url)
    try:
        barrier.wait(timeout=60)
        results = race(threads, lambda i: client.start(
            "send-verification-email", PAYLOAD, idempotency_key=KEY, idempotency_ttl="30d"))
        out.put([
            (r.id, r.created) if isinstance(r, Run) else f"{type(r).__name__}: {r}"
            for r in results
        ])
    finally:
        client.close()


@pytest.mark.slow
def test_four_processes_starting_one_key_create_exactly_one_run(
    app: StackShift, db_url: str
) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs_n, threads = 4, 5
    barrier = ctx.Barrier(procs_n)
    out = ctx.Queue()
    procs = [ctx.Process(target=_start_in_process, args=(db_url, barrier, out, threads))
             for _ in range(procs_n)]
    for p in procs:
        p.start()
    try:
        collected: list[Any] = []
        for _ in range(procs_n):
            collected.extend(out.get(timeout=90))
    except queue.Empty:
        pytest.fail("a starting process did not report")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * procs_n
    assert all(isinstance(r, tuple) for r in collected), collected
    ids = {run_id for run_id, _ in collected}
    assert len(ids) == 1
    assert [created for _, created in collected].count(True) == 1
    (run_id,) = ids
    assert [r.id for r in app.runs.list()] == [run_id]
    kinds = [e.kind for e in app.runs.timeline(run_id)]
    assert kinds.count("run.duplicate_start") == procs_n * threads - 1


def test_different_payload_raises_conflict_and_writes_nothing(app: StackShift) -> None:
    first = app.start("send-verification-email", PAYLOAD, idempotency_key=KEY)
    app.start("send-verification-email", PAYLOAD, idempotency_key=KEY)  # one duplicate
    before = row_counts(app)
    timeline_before = app.runs.timeline(first.id)

    with pytest.raises(IdempotencyConflictError) as conflict:
        app.start("send-verification-email", {**PAYLOAD, "email": "eve@example.com"},
                  idempotency_key=KEY)
    assert conflict.value.existing_run_id == first.id
    assert first.id in str(conflict.value)
    with pytest.raises(IdempotencyConflictError) as other_job:
        app.queue("emails").enqueue("send-welcome-email", PAYLOAD, idempotency_key=KEY)
    assert other_job.value.existing_run_id == first.id
    with pytest.raises(IdempotencyConflictError):
        app.start("send-verification-email", None, idempotency_key=KEY)

    assert row_counts(app) == before
    assert app.runs.timeline(first.id) == timeline_before
    assert app.runs.get(first.id).payload == PAYLOAD


def test_payloads_are_compared_as_json_values_so_1_and_1_0_are_the_same(
        app: StackShift) -> None:
    """JSON has one kind of number: a start retried with ``10`` where the first
    said ``10.0`` (one producer in JavaScript, one computing a float) is a
    duplicate, not a conflict. Other numbers still differ."""
    first = app.start("charge", {"amount": 10.0, "fee": -0.0, "rate": 0.5, "ids": [1e3]},
                      idempotency_key="charge:1")
    again = app.start("charge", {"amount": 10, "fee": 0, "rate": 0.5, "ids": [1000]},
                      idempotency_key="charge:1")
    assert (again.id, again.created) == (first.id, False)
    assert app.runs.get(first.id).payload == {"amount": 10.0, "fee": -0.0, "rate": 0.5,
                                              "ids": [1000.0]}  # stored as first given
    with pytest.raises(IdempotencyConflictError):
        app.start("charge", {"amount": 10.5, "fee": 0, "rate": 0.5, "ids": [1000]},
                  idempotency_key="charge:1")
    with pytest.raises(IdempotencyConflictError):
        app.start("charge", {"amount": "10", "fee": 0, "rate": 0.5, "ids": [1000]},
                  idempotency_key="charge:1")
    assert [e.kind for e in app.runs.timeline(first.id)].count("run.duplicate_start") == 1


def test_a_key_taken_before_numbers_were_compared_as_values_still_matches_its_payload(
        app: StackShift) -> None:
    """Keys taken by earlier versions hold the fingerprint of the payload's text as
    it was: a duplicate of that very payload still maps to its run."""
    from stackshift.serialization import digest

    payload = {"amount": 10.0}
    first = app.start("charge", payload, idempotency_key="charge:2")
    with app._service.store.db.write() as tx:
        tx.raw("UPDATE idempotency_keys SET fingerprint = :old WHERE key = :key",
               {"old": digest('charge\n{"amount":10.0}'), "key": "charge:2"})
    again = app.start("charge", payload, idempotency_key="charge:2")
    assert (again.id, again.created) == (first.id, False)
    with pytest.raises(IdempotencyConflictError):
        app.start("charge", {"amount": 11.0}, idempotency_key="charge:2")


def test_conflict_is_an_error_a_caller_can_catch_as_stackshift_error(app: StackShift) -> None:
    from stackshift import StackShiftError

    app.start("a", {"n": 1}, idempotency_key="k")
    with pytest.raises(StackShiftError):
        app.start("a", {"n": 2}, idempotency_key="k")


def test_keys_are_unique_across_jobs_and_queues(app: StackShift) -> None:
    run = app.queue("emails").enqueue("send-verification-email", PAYLOAD, idempotency_key=KEY)
    again = app.queue("other").enqueue("send-verification-email", PAYLOAD, idempotency_key=KEY)
    # Same job and payload: the key maps to the first run, whichever queue is asked.
    assert (again.id, again.created, again.queue) == (run.id, False, "emails")


def test_after_the_ttl_racing_starts_create_exactly_one_new_run(
    fake_app: StackShift, clock: FakeClock
) -> None:
    first = fake_app.start("send-verification-email", PAYLOAD, idempotency_key=KEY,
                           idempotency_ttl="1h")
    clock.advance("1h")
    results = race(30, lambda i: fake_app.start("send-verification-email", PAYLOAD,
                                                idempotency_key=KEY, idempotency_ttl="1h"))
    assert not [r for r in results if isinstance(r, BaseException)]
    ids = {r.id for r in results}
    assert len(ids) == 1 and first.id not in ids
    assert [r.created for r in results].count(True) == 1
    assert len(fake_app.runs.list(idempotency_key=KEY)) == 2
    assert row_counts(fake_app)["idempotency_keys"] == 1
