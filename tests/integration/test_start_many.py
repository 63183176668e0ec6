"""``start_many``: many runs of a job started in one transaction, on each store.

Each run is what ``start`` would have made of its payload and keys, the runs
come back in the order of the payloads, an idempotency key maps to one run
within the call and across calls, and bad input or a key bound to other work
writes none of them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from stackshift import (
    AsyncStackShift,
    IdempotencyConflictError,
    PayloadTooLargeError,
    StackShift,
    ValidationError,
)
from stackshift.settings import Settings
from stackshift.testing import FakeClock, run_until_idle


def _count(app: StackShift) -> int:
    return len(app.runs.list(limit=1000).items)


def test_each_payload_gets_a_run_in_order_with_the_options_given(
        fake_app: StackShift, clock: FakeClock) -> None:
    done: list[Any] = []

    @fake_app.job("send", queue="emails", max_attempts=2)
    def send(ctx: Any) -> Any:
        done.append(ctx.payload)
        return ctx.payload["n"] * 10

    runs = fake_app.start_many("send", [{"n": n} for n in range(5)], priority=7,
                               concurrency_keys=["user:1", None, "user:2", None, None])
    assert [r.payload for r in runs] == [{"n": n} for n in range(5)]
    assert all(r.created and r.status == "queued" for r in runs)
    assert len({r.id for r in runs}) == 5
    assert {(r.job, r.queue, r.max_attempts, r.priority) for r in runs} == {
        ("send", "emails", 2, 7)}
    assert [r.concurrency_key for r in runs] == ["user:1", None, "user:2", None, None]
    # Each is on disk as start would have left it, its timeline begun.
    for run in runs:
        stored = fake_app.runs.get(run.id)
        assert (stored.status, stored.payload, stored.created_at) == (
            "queued", run.payload, run.created_at)
        assert [e.kind for e in fake_app.runs.timeline(run.id)] == ["run.queued"]
    run_until_idle(fake_app)
    assert sorted(d["n"] for d in done) == list(range(5))
    assert [fake_app.runs.get(r.id).result for r in runs] == [0, 10, 20, 30, 40]

    later = fake_app.start_many("send", [{"n": 8}, {"n": 9}], delay="1h")
    assert [r.status for r in later] == ["scheduled", "scheduled"]
    assert run_until_idle(fake_app) == 0
    clock.advance("1h")
    assert run_until_idle(fake_app) == 2
    assert [fake_app.runs.get(r.id).result for r in later] == [80, 90]
    assert fake_app.start_many("send", []) == []


def test_an_idempotency_key_names_one_run_within_the_call_and_across_calls(
        fake_app: StackShift) -> None:
    first = fake_app.start("send", {"n": 1}, idempotency_key="k1")
    runs = fake_app.start_many("send", [{"n": 1}, {"n": 2}, {"n": 2}, {"n": 3}],
                               idempotency_keys=["k1", "k2", "k2", None])
    assert [r.created for r in runs] == [False, True, False, True]
    assert runs[0].id == first.id and runs[1].id == runs[2].id
    assert [r.idempotency_key for r in runs] == ["k1", "k2", "k2", None]
    assert _count(fake_app) == 3
    assert [e.kind for e in fake_app.runs.timeline(runs[1].id)] == [
        "run.queued", "run.duplicate_start"]
    again = fake_app.start_many("send", [{"n": 2}], idempotency_keys=["k2"])
    assert [(r.id, r.created) for r in again] == [(runs[1].id, False)]


def test_a_key_bound_to_other_work_writes_none_of_the_runs(fake_app: StackShift) -> None:
    """Against a run started before: the conflict names the key and the run it
    belongs to, and no run of the call is written (nor a key it would have
    claimed)."""
    first = fake_app.start("send", {"n": 1}, idempotency_key="k1")
    with pytest.raises(IdempotencyConflictError) as refused:
        fake_app.start_many("send", [{"n": 5}, {"n": 6}], idempotency_keys=["fresh", "k1"])
    assert "idempotency key 'k1' belongs to run" in str(refused.value)
    assert refused.value.existing_run_id == first.id
    assert [r.id for r in fake_app.runs.list().items] == [first.id]
    # The keys it would have taken are free: a start with them creates a run.
    assert fake_app.start("send", {"n": 7}, idempotency_key="fresh").created


def test_one_key_given_to_two_payloads_of_a_call_is_refused_naming_both(
        fake_app: StackShift) -> None:
    """Not a conflict with a run: the run the key would name is one the call
    itself would have started, so the error names the two items instead."""
    with pytest.raises(ValidationError) as refused:
        fake_app.start_many("send", [{"n": 5}, {"n": 6}, {"n": 7}, {"n": 8}],
                            idempotency_keys=["a", "dup", "b", "dup"])
    assert str(refused.value) == (
        "idempotency_keys[3] repeats idempotency_keys[1] ('dup') with another payload:"
        " a key names one run, so nothing was started")
    assert _count(fake_app) == 0
    # The same payload (whole-number floats as integers) is one run, as across calls.
    runs = fake_app.start_many("send", [{"n": 7.0}, {"n": 7}], idempotency_keys=["dup", "dup"])
    assert [r.created for r in runs] == [True, False] and runs[0].id == runs[1].id


BAD: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"payloads": {"n": 1}}, ValidationError,
     "payloads must be a list of payloads, one per run, got a dict"),
    ({"payloads": [1, 2], "idempotency_keys": ["a"]}, ValidationError,
     "idempotency_keys has 1 key for 2 payloads: give one per payload"),
    ({"payloads": [1, 2], "concurrency_keys": "ab"}, ValidationError,
     "concurrency_keys must be a list (a key or None per payload), got a str"),
    ({"payloads": [1] * 1001}, ValidationError,
     "start_many starts at most 1,000 runs a call, got 1,001 payloads"),
    ({"payloads": [1, {2}]}, TypeError, "payloads[1]: set is not JSON-serialisable"),
    ({"payloads": [1, "x" * 300]}, PayloadTooLargeError,
     "payloads[1] is 302 bytes as JSON, over the limit of 256 bytes"),
    ({"payloads": [1, 2], "idempotency_keys": ["a", ""]}, ValidationError,
     "idempotency_keys[1] must be a non-empty string, got ''"),
    ({"payloads": [1, 2], "concurrency_keys": [None, 5]}, ValidationError,
     "concurrency_keys[1] must be a non-empty string, got 5"),
    ({"payloads": [1], "idempotency_ttl": "1h"}, ValidationError,
     "idempotency_ttl needs idempotency_keys with at least one key"),
    ({"payloads": [1], "delay": "1h", "scheduled_at": "2030-01-01T00:00:00Z"},
     ValidationError, "give scheduled_at or delay, not both"),
    ({"payloads": [1], "queue_name": "a b"}, ValidationError, "queue name 'a b' is invalid"),
    ({"payloads": [1], "max_attempts": 0}, ValidationError,
     "max_attempts must be an integer from 1 to 1000, got 0"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD,
                         ids=[message[:40] for _, _, message in BAD])
def test_bad_input_is_refused_naming_the_item_and_writes_nothing(
        db_url: str, options: dict[str, Any], error: type[Exception], message: str) -> None:
    with StackShift(db_url, settings=Settings(max_payload_bytes=256)) as app:
        with pytest.raises(error) as refused:
            app.start_many("send", **options)
        assert message in str(refused.value)
        assert _count(app) == 0
        with pytest.raises(ValidationError, match="job name 'a b' is invalid"):
            app.start_many("a b", [])


def test_the_async_client_starts_many_runs(db_url: str) -> None:
    async def scenario() -> list[Any]:
        async with AsyncStackShift(db_url) as app:
            runs = await app.start_many("send", [{"n": 1}, {"n": 2}],
                                        idempotency_keys=[None, "k"])
            return [(r.payload, r.idempotency_key, r.created) for r in runs]

    assert asyncio.run(scenario()) == [({"n": 1}, None, True), ({"n": 2}, "k", True)]


def test_two_calls_claiming_the_same_keys_in_opposite_orders_both_finish(db_url: str) -> None:
    """Two processes' calls (two clients) with the same keys, one in the other's
    reverse order, at once and again: neither waits on the other for ever (on
    PostgreSQL, a deadlock), and each key names one run both calls return."""
    keys = [f"k{n:02}" for n in range(40)]
    results: dict[str, list[list[Any]]] = {"forward": [], "backward": []}
    errors: list[BaseException] = []
    with StackShift(db_url) as one, StackShift(db_url) as other:
        def call(app: StackShift, name: str, order: list[str]) -> None:
            try:
                for _ in range(5):
                    runs = app.start_many("send", [{"key": k} for k in order],
                                          idempotency_keys=order)
                    results[name].append(sorted((r.idempotency_key, r.id) for r in runs))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=call, args=(one, "forward", keys)),
                   threading.Thread(target=call, args=(other, "backward", keys[::-1]))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert len(one.runs.list(limit=1000).items) == 40
    every = results["forward"] + results["backward"]
    assert len(every) == 10 and all(found == every[0] for found in every)
